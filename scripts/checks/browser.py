"""Headless Chromium for the browser checks (serve-page-check.py, label-page-check.py,
card-page-check.py): one driver set-up, imported by each of them.

Uses Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver;
`scripts/setup --test` installs them) through selenium (scripts/requirements-test.txt).
Nothing is downloaded: selenium's own driver manager is never asked, since the driver's
path is given.
"""

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def make_driver():
    """A headless Chromium, 1200x900, that keeps the page's console log ("browser")."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1200,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def quit_driver(driver):
    """Closes the browser if there is one; a driver that is already gone is fine."""
    if driver is not None:
        try:
            driver.quit()
        except Exception:
            pass
