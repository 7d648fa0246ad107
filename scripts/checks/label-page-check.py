#!/usr/bin/env python3
"""End-to-end check of `forja label` (the preference-labelling stage) in headless Chromium.

  python scripts/checks/label-page-check.py --bin target/release/forja --out /tmp/label-out [--port N]

Writes 4 prompt/answer pairs to a PAIRS.jsonl in a temporary directory (one answer is an
HTML/script injection attempt) and runs the real server,

  BIN label --input pairs=PAIRS.jsonl --set port=PORT --set per_pair=2 --out OUT

then drives the page at http://127.0.0.1:PORT/ as two annotators:

  1. ana: judges with key 1 and a click on #choose-b, checks "2 / 4 judged", undoes with
     key u (the same pair comes back, "1 / 4 judged") and judges it again with key 3 (tie);
  2. SIGKILLs the server, checks OUT/judgements.jsonl (one JSON object a line), restarts it
     with the same command, reloads the page: still "2 / 4 judged"; ana judges the other
     two pairs (keys 2 and 4) and sees #done;
  3. ben (localStorage cleared, name typed, Enter) judges all 4 pairs with keys 1 1 2 1;
     the server must then exit 0 by itself;
  4. OUT/preferences.arrow (read with pyarrow) holds one row per A/B judgement with the
     texts that were on screen, OUT/report.md mentions Cohen's kappa, the injected markup
     stayed text (window.__xss undefined) and the browser console has no SEVERE entry.

--out must not exist or be empty. Success: "label-page-check: ok (...)" on stdout and exit
status 0. Any failure: the reason (plus the server's log and the browser console) on stderr,
exit status 1. Takes about 15 s.

Needs selenium and pyarrow (scripts/requirements-test.txt) and the Debian packages chromium
and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from browser import make_driver, quit_driver  # scripts/checks/browser.py

STEP_TIMEOUT = 15.0  # seconds for one page step
SERVER_TIMEOUT = 30.0  # seconds for the server to answer / to exit when done

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2"><b>bold</b>'
PAIRS = [
    {"id": "capital", "prompt": "What is the capital of France?",
     "a": "Paris.", "b": "The capital of France is Lyon."},
    {"id": "haiku", "prompt": "Write a haiku about rain.",
     "a": "Soft rain on the roof\n  counting the hours till dawn\npuddles hold the sky",
     "b": "Rain is water that falls from clouds."},
    {"id": "html", "prompt": "Show me a bold word in HTML.",
     "a": XSS, "b": "Use <b>word</b> &amp; close the tag."},
    {"id": "sum", "prompt": "2 + 2 = ?", "a": "4", "b": "22"},
]
BY_PROMPT = {p["prompt"]: p for p in PAIRS}
CHOICE_KEYS = {"1": "a", "2": "b", "3": "tie", "4": "bad"}
PREFERENCE_COLUMNS = {"prompt", "chosen", "rejected", "annotator", "source"}

# One snapshot of the page, read in a single round trip.
STATE_JS = """
const b = document.body, $ = (id) => document.getElementById(id);
const shown = (id) => { const e = $(id); return !!e && !e.hidden && e.getClientRects().length > 0; };
return {
  pair: b.getAttribute("data-pair"), ready: b.getAttribute("data-ready"),
  seq: b.getAttribute("data-seq"),
  prompt: $("prompt") ? $("prompt").textContent : null,
  a: $("answer-a") ? $("answer-a").textContent : null,
  b: $("answer-b") ? $("answer-b").textContent : null,
  aChildren: $("answer-a") ? $("answer-a").children.length : 0,
  bChildren: $("answer-b") ? $("answer-b").children.length : 0,
  aWhiteSpace: $("answer-a") ? getComputedStyle($("answer-a")).whiteSpace : null,
  progress: $("progress") ? $("progress").textContent.trim() : null,
  status: $("status") ? $("status").textContent.trim() : null,
  doneShown: shown("done"), doneText: $("done") ? $("done").textContent : "",
  pairShown: shown("prompt") && shown("answer-a") && shown("answer-b"),
  xss: typeof window.__xss,
};
"""


class CheckFailed(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The `BIN label ...` process; its stdout and stderr go to a log file."""

    def __init__(self, command, port, log_path):
        self.command, self.port, self.log_path = command, port, log_path
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        log.write(f"--- {' '.join(self.command)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        url = f"http://127.0.0.1:{self.port}/api/next?annotator=x"
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise CheckFailed(f"the server exited with status {self.proc.returncode} "
                                  "before answering /api/next")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    body = json.loads(response.read())
                if not isinstance(body, dict) or "done" not in body:
                    raise CheckFailed(f"/api/next answered {body!r} (no 'done')")
                return
            except CheckFailed:
                raise
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise CheckFailed(f"the server did not answer {url} within {SERVER_TIMEOUT:.0f}s")
            time.sleep(0.1)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, chars=3000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-chars:]
        except OSError:
            return ""


class Check:
    def __init__(self, driver, server, out):
        self.driver, self.server, self.out = driver, server, out
        self.judgements = []  # {"annotator", "pair", "prompt", "left", "right", "choice"}
        self.xss_seen = False
        self.console = []  # browser log entries read so far

    # -- page helpers -------------------------------------------------------------------

    def state(self):
        return self.driver.execute_script(STATE_JS)

    def wait(self, what, predicate, timeout=STEP_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = self.state()
                if last["status"] and last["status"].lower().startswith("error"):
                    raise CheckFailed(f"while waiting for {what}: page status {last['status']!r}")
                if predicate(last):
                    return last
            except CheckFailed:
                raise
            except Exception:  # page (re)loading
                pass
            if time.monotonic() > deadline:
                raise CheckFailed(f"timed out after {timeout:.0f}s waiting for {what}; "
                                  f"page state {last!r}")
            time.sleep(0.05)

    def check_render(self, s):
        """Checks on every state the page settles in: no script ran, texts are plain text,
        and a shown pair is one of ours, whole."""
        if s["xss"] != "undefined":
            raise CheckFailed(f"window.__xss is {s['xss']}: the page executed model output")
        if s["aChildren"] or s["bChildren"]:
            raise CheckFailed("an answer element has child elements: model output became markup")
        if s["doneShown"]:
            return
        if not s["pairShown"]:
            raise CheckFailed(f"no pair and no #done on screen: {s!r}")
        pair = BY_PROMPT.get(s["prompt"])
        if pair is None:
            raise CheckFailed(f"#prompt shows {s['prompt']!r}, not one of the input prompts")
        if s["pair"] != pair["id"]:
            raise CheckFailed(f"body[data-pair] is {s['pair']!r}, the prompt is pair {pair['id']!r}")
        if sorted([s["a"], s["b"]]) != sorted([pair["a"], pair["b"]]):
            raise CheckFailed(f"pair {pair['id']}: the answers on screen {[s['a'], s['b']]!r} "
                              f"are not the input's {[pair['a'], pair['b']]!r}")
        if s["aWhiteSpace"] != "pre-wrap":
            raise CheckFailed(f"#answer-a has white-space {s['aWhiteSpace']!r}, not pre-wrap")
        if XSS in (s["a"], s["b"]):
            if "<script>" not in (s["a"] + s["b"]):
                raise CheckFailed("the injected answer's textContent lacks the literal <script>")
            self.xss_seen = True

    def settled(self, after_seq=None):
        """Waits until the page has rendered a server answer (after render number after_seq)."""
        def ok(s):
            if s["ready"] != "1":
                return False
            return after_seq is None or (s["seq"] is not None and int(s["seq"]) > int(after_seq))
        s = self.wait("the page to render (body[data-ready=1])", ok)
        self.check_render(s)
        return s

    def expect_progress(self, s, text):
        if s["progress"] != text:
            raise CheckFailed(f"#progress reads {s['progress']!r}, expected {text!r}")

    def press(self, key):
        from selenium.webdriver.common.action_chains import ActionChains
        # Shortcuts count only outside the name field.
        self.driver.execute_script("if (document.activeElement) document.activeElement.blur();")
        ActionChains(self.driver).send_keys(key).perform()

    def judge(self, annotator, how, choice):
        """Judges the pair on screen by `how` (a key, or ("click", element id)); records what
        was on screen; returns the next settled state."""
        from selenium.webdriver.common.by import By

        before = self.settled()
        if before["doneShown"]:
            raise CheckFailed(f"{annotator}: #done shown, but a pair was expected")
        if isinstance(how, tuple):
            self.driver.find_element(By.ID, how[1]).click()
        else:
            self.press(how)
        after = self.settled(before["seq"])
        if not after["status"] or not after["status"].lower().startswith("saved"):
            raise CheckFailed(f"after judging {before['pair']}, #status reads "
                              f"{after['status']!r}, expected 'Saved…'")
        self.judgements.append({"annotator": annotator, "pair": before["pair"],
                                "prompt": before["prompt"], "left": before["a"],
                                "right": before["b"], "choice": choice})
        return after

    def start_as(self, name, use_enter):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        field = self.driver.find_element(By.ID, "annotator")
        field.clear()
        if use_enter:
            field.send_keys(name + Keys.ENTER)
        else:
            field.send_keys(name)
            self.driver.find_element(By.ID, "start").click()
        self.wait(f"the page to start as {name}",
                  lambda s: s["ready"] == "1")
        stored = self.driver.execute_script(
            "return Object.keys(localStorage).map((k) => localStorage.getItem(k));")
        if name not in stored:
            raise CheckFailed(f"the annotator name {name!r} is not in localStorage ({stored!r})")
        return self.settled()

    def read_console(self):
        try:
            self.console.extend(self.driver.get_log("browser"))
        except Exception as e:  # a driver without the log endpoint
            self.console.append({"level": "INFO", "message": f"(no console log: {e})"})

    # -- the flow -----------------------------------------------------------------------

    def run(self, base_url):
        from selenium.webdriver.common.by import By

        d = self.driver
        d.get(base_url)
        self.wait("the page (#annotator, #start)",
                  lambda s: d.find_element(By.ID, "annotator") and d.find_element(By.ID, "start"))
        # Nothing is judged without a name.
        d.execute_script("localStorage.clear();")
        d.refresh()
        self.wait("the reloaded page", lambda s: s["progress"] is not None)
        if d.find_element(By.ID, "annotator").get_attribute("value"):
            raise CheckFailed("#annotator is not empty after localStorage.clear()")
        self.press("1")
        time.sleep(0.3)
        s = self.state()
        if s["ready"] == "1" or s["pair"]:
            raise CheckFailed(f"the page shows a pair before a name was given: {s!r}")

        # 1. ana: key 1, click B, undo, key 3.
        s = self.start_as("ana", use_enter=False)
        self.expect_progress(s, "0 / 4 judged")
        self.judge("ana", "1", "a")
        s = self.judge("ana", ("click", "choose-b"), "b")
        self.expect_progress(s, "2 / 4 judged")
        undone = self.judgements.pop()
        self.press("u")
        s = self.settled(s["seq"])
        if s["pair"] != undone["pair"]:
            raise CheckFailed(f"after undo the page shows pair {s['pair']!r}, "
                              f"expected the undone {undone['pair']!r}")
        self.expect_progress(s, "1 / 4 judged")
        s = self.judge("ana", "3", "tie")
        self.expect_progress(s, "2 / 4 judged")

        # 2. SIGKILL between two judgements; the log survives; a restart loses nothing.
        self.server.kill()
        self.check_log([j["pair"] for j in self.judgements])
        self.server.start()
        d.refresh()
        try:  # the page starts by itself with the remembered name ...
            s = self.wait("the reloaded page to start as ana", lambda s: s["ready"] == "1",
                          timeout=5)
        except CheckFailed:  # ... or needs Start pressed again
            if d.find_element(By.ID, "annotator").get_attribute("value") != "ana":
                raise CheckFailed("the reloaded page does not remember the annotator 'ana'")
            d.find_element(By.ID, "start").click()
        s = self.settled()
        if d.find_element(By.ID, "annotator").get_attribute("value") != "ana":
            raise CheckFailed("the reloaded page does not remember the annotator 'ana'")
        self.expect_progress(s, "2 / 4 judged")
        if s["pair"] in {j["pair"] for j in self.judgements}:
            raise CheckFailed(f"after the restart ana is shown {s['pair']!r} again")
        self.judge("ana", "2", "b")
        s = self.judge("ana", "4", "bad")
        self.expect_done(s, "ana")

        # 3. ben in a fresh localStorage: keys 1 1 2 1; the server then exits by itself.
        d.execute_script("localStorage.clear();")
        d.refresh()
        self.wait("the reloaded page", lambda s: s["progress"] is not None)
        s = self.start_as("ben", use_enter=True)
        self.expect_progress(s, "0 / 4 judged")
        for key in ("1", "1", "2"):
            self.judge("ben", key, CHOICE_KEYS[key])
        s = self.judge("ben", "1", "a")
        self.expect_done(s, "ben")
        try:
            rc = self.server.proc.wait(timeout=SERVER_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"the server did not exit within {SERVER_TIMEOUT:.0f}s "
                              "of the last judgement")
        if rc != 0:
            raise CheckFailed(f"the server exited with status {rc}, expected 0")
        if self.state()["xss"] != "undefined":
            raise CheckFailed("window.__xss got set: the page executed model output")
        if not self.xss_seen:
            raise CheckFailed("the pair with the injected answer was never shown")

        # 4. Outputs.
        rows = self.check_preferences()
        kappa_line = self.check_report()
        self.read_console()
        severe = [e for e in self.console if e.get("level") == "SEVERE"]
        if severe:
            raise CheckFailed("browser console errors: "
                              + "; ".join(str(e.get("message")) for e in severe))
        return len(self.judgements), rows, kappa_line

    def expect_done(self, s, annotator):
        if not s["doneShown"] or "All pairs judged" not in s["doneText"]:
            raise CheckFailed(f"{annotator}: #done with 'All pairs judged' is not shown: {s!r}")
        if s["pairShown"]:
            raise CheckFailed(f"{annotator}: the pair area is still visible when done")
        if s["pair"] != "":
            raise CheckFailed(f"{annotator}: body[data-pair] is {s['pair']!r} when done")
        self.expect_progress(s, "4 / 4 judged")

    def check_log(self, judged_pairs):
        path = os.path.join(self.out, "judgements.jsonl")
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line for line in f.read().split("\n") if line.strip()]
        except OSError as e:
            raise CheckFailed(f"cannot read {path} after the kill: {e}")
        values = set()
        for n, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError as e:
                raise CheckFailed(f"{path} line {n} is not JSON ({e}): {line!r}")
            if not isinstance(record, dict):
                raise CheckFailed(f"{path} line {n} is not a JSON object: {line!r}")
            values.update(v for v in record.values() if isinstance(v, str))
        if len(lines) < len(judged_pairs):
            raise CheckFailed(f"{path} has {len(lines)} lines after the kill, "
                              f"expected at least {len(judged_pairs)}")
        missing = [p for p in judged_pairs if p not in values]
        if missing:
            raise CheckFailed(f"{path} does not mention the judged pairs {missing!r}")

    def check_preferences(self):
        import pyarrow as pa
        import pyarrow.ipc

        path = os.path.join(self.out, "preferences.arrow")
        try:
            with pa.memory_map(path) as source:
                table = pa.ipc.open_file(source).read_all()
        except Exception as e:
            raise CheckFailed(f"cannot read {path} as an Arrow IPC file: {type(e).__name__}: {e}")
        names = set(table.column_names)
        if names != PREFERENCE_COLUMNS:
            raise CheckFailed(f"{path} has columns {table.column_names}, "
                              f"expected {sorted(PREFERENCE_COLUMNS)}")
        rows = table.select(["prompt", "chosen", "rejected", "annotator"]).to_pylist()
        expected = []
        for j in self.judgements:
            if j["choice"] == "a":
                expected.append((j["annotator"], j["prompt"], j["left"], j["right"]))
            elif j["choice"] == "b":
                expected.append((j["annotator"], j["prompt"], j["right"], j["left"]))
        if len(rows) != len(expected):
            raise CheckFailed(f"{path} has {len(rows)} rows, expected {len(expected)} "
                              "(one per A/B judgement; ties and both-bad left out)")
        annotators = {r["annotator"] for r in rows}
        if annotators != {"ana", "ben"}:
            raise CheckFailed(f"{path} has annotators {sorted(map(str, annotators))}, "
                              "expected ana and ben")
        first = self.judgements[0]  # ana, key 1: the left answer won
        mine = [r for r in rows if r["annotator"] == "ana" and r["prompt"] == first["prompt"]]
        if len(mine) != 1 or mine[0]["chosen"] != first["left"]:
            raise CheckFailed(f"ana's first judgement (key 1 on {first['pair']}): expected chosen "
                              f"= the left answer {first['left']!r}, rows {mine!r}")
        got = sorted((r["annotator"], r["prompt"], r["chosen"], r["rejected"]) for r in rows)
        if got != sorted(expected):
            raise CheckFailed(f"{path} rows differ from the judgements made on screen:\n"
                              f"  rows:     {got!r}\n  expected: {sorted(expected)!r}")
        return len(rows)

    def check_report(self):
        path = os.path.join(self.out, "report.md")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise CheckFailed(f"cannot read {path}: {e}")
        for line in text.splitlines():
            if "Cohen's kappa" in line:
                return line.strip()
        raise CheckFailed(f"{path} has no line with \"Cohen's kappa\"")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", required=True, help="the forja binary")
    parser.add_argument("--out", required=True, help="output directory for the label stage "
                        "(created; must not exist or be empty)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    args = parser.parse_args()

    out = os.path.abspath(args.out)
    if os.path.isdir(out) and os.listdir(out):
        print(f"label-page-check: FAILED: --out {out} is not empty", file=sys.stderr)
        return 1
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="label-page-check-")
    pairs_path = os.path.join(work, "pairs.jsonl")
    with open(pairs_path, "w", encoding="utf-8") as f:
        for pair in PAIRS:
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
    port = args.port or free_port()
    command = [os.path.abspath(args.bin), "label", "--input", f"pairs={pairs_path}",
               "--set", f"port={port}", "--set", "per_pair=2", "--out", out]
    server = Server(command, port, os.path.join(work, "server.log"))
    driver = None
    check = None
    ok = False
    try:
        server.start()
        driver = make_driver()
        check = Check(driver, server, out)
        judged, rows, kappa_line = check.run(f"http://127.0.0.1:{port}/")
        ok = True
    except Exception as e:  # CheckFailed, WebDriver errors, missing selenium/pyarrow, ...
        reason = str(e) if isinstance(e, CheckFailed) else f"{type(e).__name__}: {e}"
        print(f"label-page-check: FAILED: {reason}", file=sys.stderr)
        tail = server.log_tail()
        if tail.strip():
            print("  server log (tail):\n    " + tail.rstrip().replace("\n", "\n    "),
                  file=sys.stderr)
        if check is not None:
            check.read_console()
            for entry in check.console:
                print(f"  console [{entry.get('level')}] {entry.get('message')}", file=sys.stderr)
        print(f"  (pairs and server log kept in {work})", file=sys.stderr)
    finally:
        server.kill()
        quit_driver(driver)
    if not ok:
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print(f"label-page-check: ok ({judged} judgements, {rows} preference rows, "
          f"kappa line: {kappa_line})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
