#!/usr/bin/env python3
"""Check of a pipeline run's report card (runs/NAME/report.html) in headless Chromium.

  python scripts/checks/card-page-check.py runs/NAME/report.html [--expect TEXT]... \
      [--attributions] [--timeout 30]

Opens the file as a file:// URL and checks that the card is self-contained and complete:
  - the browser console has no SEVERE entry (script errors, resources refused by the
    card's Content-Security-Policy, failed loads);
  - <head> has a UTF-8 charset, the CSP meta tag
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'" and a non-empty <title>;
  - no <script> element, and no src / href (xlink:href in SVG included) / srcset
    attribute that starts with http:, https: or // (no external resources); every <img>
    src is a data: URL (pictures are inline <svg>);
  - #summary, #footprint table, #metrics and #artifacts exist; the footprint table has at
    least 2 rows with <td> cells (stages and the total row; a header row of <th> only does
    not count); at least one section.stage exists, each with an id "stage-NAME";
  - every relative href in #artifacts a[href] names an existing file or folder, relative
    to the HTML file's folder;
  - each --expect TEXT occurs in the page's visible text (document.body.innerText,
    case-sensitive);
  - with --attributions: at least one span.attr exists and every one has a non-empty title.

Success: one line "card-page-check: ok (N stages, M artifact links, K svg pictures,
A attribution spans)" on stdout and exit status 0 (K counts outermost <svg> elements).
Any failure: every problem found and the browser console log on stderr, exit status 1.

Needs selenium and the Debian packages chromium and chromium-driver
(/usr/bin/chromium, /usr/bin/chromedriver).
"""
import argparse
import re
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from browser import make_driver, quit_driver  # scripts/checks/browser.py

CSP = {"default-src 'none'", "img-src data:", "style-src 'unsafe-inline'"}


class CheckFailed(Exception):
    pass


# Collects everything the checks need in one pass over the DOM.
INSPECT_JS = r"""
const q = (s) => document.querySelector(s);
const qa = (s) => Array.from(document.querySelectorAll(s));
const describe = (el) => {
  let s = '<' + el.tagName.toLowerCase();
  if (el.id) s += ' id="' + el.id + '"';
  return s + '>';
};
const external = [];
for (const el of qa('*')) {
  for (const attr of Array.from(el.attributes)) {
    const name = attr.localName.toLowerCase();
    if (name !== 'src' && name !== 'href' && name !== 'srcset') continue;
    const values = name === 'srcset'
      ? attr.value.split(',').map((c) => c.trim().split(/\s+/)[0])
      : [attr.value];
    for (const v of values) {
      const t = (v || '').trim().toLowerCase();
      if (t.startsWith('http:') || t.startsWith('https:') || t.startsWith('//')) {
        external.push(describe(el) + ' ' + attr.name + '="' + attr.value + '"');
      }
    }
  }
}
const footprint = q('#footprint table');
const csp = qa('meta[http-equiv]')
  .filter((m) => m.httpEquiv.toLowerCase() === 'content-security-policy')
  .map((m) => m.content);
return {
  charset: document.characterSet,
  title: document.title,
  csp: csp,
  scripts: qa('script').length,
  external: external,
  non_data_imgs: qa('img').filter((i) => !(i.getAttribute('src') || '').trim().toLowerCase()
                                             .startsWith('data:'))
                            .map((i) => describe(i) + ' src="' + (i.getAttribute('src') || '') + '"'),
  has: {
    '#summary': !!q('#summary'),
    '#footprint table': !!footprint,
    '#metrics': !!q('#metrics'),
    '#artifacts': !!q('#artifacts'),
  },
  footprint_rows: footprint
    ? Array.from(footprint.rows).filter((r) => r.querySelector('td')).length : 0,
  stage_ids: qa('section.stage').map((s) => s.id),
  artifact_hrefs: qa('#artifacts a[href]').map((a) => a.getAttribute('href')),
  svgs: qa('svg').filter((s) => !(s.parentElement && s.parentElement.closest('svg'))).length,
  attr_titles: qa('span.attr').map((s) => s.getAttribute('title')),
  text: document.body ? document.body.innerText : '',
};
"""


def is_relative(href):
    """True for a relative path reference: no scheme, not absolute, not a fragment."""
    h = href.strip()
    if not h or h.startswith(("#", "/", "?")):
        return False
    return not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", h)


def run_check(driver, args):
    html = Path(args.html).resolve()
    if not html.is_file():
        raise CheckFailed(f"no such file: {args.html}")
    driver.set_page_load_timeout(args.timeout)
    driver.get(html.as_uri())
    deadline = time.monotonic() + args.timeout
    while driver.execute_script("return document.readyState") != "complete":
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {args.timeout}s waiting for the page to load")
        time.sleep(0.1)
    info = driver.execute_script(INSPECT_JS)
    console = driver.get_log("browser")

    problems = []
    severe = [e for e in console if e.get("level") == "SEVERE"]
    if severe:
        problems.append(f"the browser console has {len(severe)} SEVERE entr"
                        f"{'y' if len(severe) == 1 else 'ies'} (listed below)")

    if (info["charset"] or "").upper() != "UTF-8":
        problems.append(f"document charset is {info['charset']!r}, expected UTF-8 "
                        f"(<meta charset=\"utf-8\">)")
    if not (info["title"] or "").strip():
        problems.append("<title> is missing or empty")
    if not info["csp"]:
        problems.append("no Content-Security-Policy <meta http-equiv> tag")
    for content in info["csp"]:
        directives = {" ".join(d.split()) for d in content.split(";") if d.strip()}
        if directives != CSP:
            problems.append(f"Content-Security-Policy is {content!r}, expected "
                            f"\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\"")

    if info["scripts"]:
        problems.append(f"{info['scripts']} <script> element(s); the card must have none")
    for ref in info["external"]:
        problems.append(f"external resource: {ref}")
    for img in info["non_data_imgs"]:
        problems.append(f"<img> that is not a data: URL (pictures must be inline <svg>): {img}")

    for selector, present in info["has"].items():
        if not present:
            problems.append(f"missing {selector}")
    if info["has"]["#footprint table"] and info["footprint_rows"] < 2:
        problems.append(f"#footprint table has {info['footprint_rows']} row(s) with <td> "
                        f"cells, expected at least 2 (stages and a total)")
    if not info["stage_ids"]:
        problems.append("no section.stage")
    for sid in info["stage_ids"]:
        if not (sid or "").startswith("stage-") or sid == "stage-":
            problems.append(f"section.stage with id {sid!r}, expected \"stage-NAME\"")

    base = html.parent
    for href in info["artifact_hrefs"]:
        if not is_relative(href):
            continue
        rel = unquote(urlsplit(href.strip()).path)
        if not rel or not (base / rel).exists():
            problems.append(f"#artifacts link {href!r} points to nothing: {base / rel} "
                            f"does not exist")

    for text in args.expect:
        if text not in info["text"]:
            problems.append(f"visible text does not contain {text!r}")

    titles = info["attr_titles"]
    if args.attributions:
        if not titles:
            problems.append("--attributions: no span.attr on the page")
        empty = sum(1 for t in titles if not (t or "").strip())
        if empty:
            problems.append(f"--attributions: {empty} of {len(titles)} span.attr have no title")

    if problems:
        raise CheckFailed("\n  ".join([f"{len(problems)} problem(s) in {args.html}:"] + problems),
                          console)
    return (f"card-page-check: ok ({len(info['stage_ids'])} stages, "
            f"{len(info['artifact_hrefs'])} artifact links, {info['svgs']} svg pictures, "
            f"{len(titles)} attribution spans)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", help="the report card, e.g. runs/NAME/report.html")
    parser.add_argument("--expect", action="append", default=[], metavar="TEXT",
                        help="text the visible page must contain (case-sensitive; repeatable)")
    parser.add_argument("--attributions", action="store_true",
                        help="require at least one span.attr, each with a non-empty title")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the page to load (default 30)")
    args = parser.parse_args()

    driver = None
    try:
        driver = make_driver()
        line = run_check(driver, args)
    except Exception as e:  # CheckFailed, WebDriver errors, missing selenium, ...
        reason = str(e.args[0]) if isinstance(e, CheckFailed) else f"{type(e).__name__}: {e}"
        print(f"card-page-check: FAILED: {reason}", file=sys.stderr)
        console = e.args[1] if isinstance(e, CheckFailed) and len(e.args) > 1 else None
        if console is None and driver is not None:
            try:
                console = driver.get_log("browser")
            except Exception as log_error:
                print(f"  (no console log: {log_error})", file=sys.stderr)
        for entry in console or []:
            print(f"  console [{entry.get('level')}] {str(entry.get('message')).strip()}",
                  file=sys.stderr)
        return 1
    finally:
        quit_driver(driver)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
