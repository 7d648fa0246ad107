#!/usr/bin/env python3
"""End-to-end check of forja-serve's chat page in headless Chromium.

  python scripts/checks/serve-page-check.py --url http://127.0.0.1:PORT --api-key KEY \
      [--message TEXT] [--timeout 60]

Opens the page at --url, types the API key into #api-key, waits for #model-id
to show the served model, types --message into #message, clicks #send, and
waits until an assistant turn (.msg.assistant[data-done="true"]) has non-empty
text and #status reads "done". The page streams the reply from
POST /v1/chat/completions (server-sent events).

Success: one JSON line {"model_id", "reply", "chunks_ok": true} on stdout and
exit status 0. Any failure: the reason and the browser console log on stderr,
exit status 1.

Needs selenium and the Debian packages chromium and chromium-driver
(/usr/bin/chromium, /usr/bin/chromedriver).
"""
import argparse
import json
import sys
import time

from browser import make_driver, quit_driver  # scripts/checks/browser.py


class CheckFailed(Exception):
    pass


def wait_for(what, predicate, timeout, driver):
    """Polls predicate() until it returns a truthy value; raises CheckFailed
    naming `what` (and the page's #status) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except CheckFailed:
            raise
        except Exception:  # element not there yet, stale, ...
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout}s waiting for {what}; "
                              f"#status: {status_text(driver)!r}")
        time.sleep(0.1)


def status_text(driver):
    from selenium.webdriver.common.by import By
    try:
        return driver.find_element(By.ID, "status").text.strip()
    except Exception:
        return None


def run_check(driver, args):
    from selenium.webdriver.common.by import By

    driver.get(args.url.rstrip("/") + "/")
    key = wait_for("#api-key", lambda: driver.find_element(By.ID, "api-key"),
                   args.timeout, driver)
    key.clear()
    key.send_keys(args.api_key)
    # The page re-fetches /v1/models on input/change of the key; blur to fire change.
    driver.find_element(By.ID, "message").click()

    model = wait_for("#model-id to be non-empty",
                     lambda: driver.find_element(By.ID, "model-id").text.strip(),
                     args.timeout, driver)

    # The test model is random: its first sampled token can end the turn (or
    # be a space), so an empty answer is retried twice before it is a failure.
    for _ in range(3):
        message = driver.find_element(By.ID, "message")
        message.clear()
        message.send_keys(args.message)
        before = len(driver.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
        driver.find_element(By.ID, "send").click()

        def reply():
            status = status_text(driver) or ""
            if status.startswith("error:"):
                raise CheckFailed(f"page reports {status!r}")
            turns = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")
            if len(turns) <= before or turns[before].get_attribute("data-done") != "true":
                return None
            return ("done", turns[before].text)  # truthy even when the text is empty

        _, text = wait_for('.msg.assistant[data-done="true"]', reply, args.timeout, driver)
        if text.strip():
            break
    else:
        raise CheckFailed("the assistant turn finished with empty text (3 times)")
    status = status_text(driver)
    if status != "done":
        raise CheckFailed(f"#status is {status!r}, expected 'done'")
    users = driver.find_elements(By.CSS_SELECTOR, ".msg.user")
    if not users or users[-1].text.strip() != args.message.strip():
        raise CheckFailed("the user turn is missing or differs from --message")
    return {"model_id": model, "reply": text, "chunks_ok": True}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--message", default="Hello! Say something short.")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for each step (default 60)")
    args = parser.parse_args()

    driver = None
    try:
        driver = make_driver()
        result = run_check(driver, args)
    except Exception as e:  # CheckFailed, WebDriver errors, missing selenium, ...
        reason = str(e) if isinstance(e, CheckFailed) else f"{type(e).__name__}: {e}"
        print(f"serve-page-check: FAILED: {reason}", file=sys.stderr)
        if driver is not None:
            try:
                for entry in driver.get_log("browser"):
                    print(f"  console [{entry.get('level')}] {entry.get('message')}",
                          file=sys.stderr)
            except Exception as log_error:
                print(f"  (no console log: {log_error})", file=sys.stderr)
        return 1
    finally:
        quit_driver(driver)
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
