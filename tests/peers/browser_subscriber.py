"""Headless Chromium, driven by Selenium, on examples/browser/index.html:
the page subscribes with the browser's own WebSocket (the token in the
Kubernetes subprotocol) and lists the channel's messages.

Usage: browser_subscriber.py PAGE_URL MESSAGE COUNT
Prints "subscribed" once the page says so, publishes MESSAGE through the
page's form, then prints "message <text>" for each message the page shows,
until it has shown COUNT. Exits non-zero with the page's status if it never
subscribes.
"""
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

DEADLINE = 30.0


def main(page: str, message: str, count: int) -> int:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(page)
        status = lambda: driver.find_element(By.ID, "status").text
        end = time.monotonic() + DEADLINE
        while status() != "subscribed":
            if time.monotonic() > end:
                print("status:", status(), flush=True)
                return 1
            time.sleep(0.05)
        print("subscribed", flush=True)
        driver.find_element(By.ID, "text").send_keys(message)
        driver.find_element(By.CSS_SELECTOR, "#publish button").click()
        shown = 0
        end = time.monotonic() + DEADLINE
        while shown < count and time.monotonic() < end:
            items = driver.find_elements(By.CSS_SELECTOR, "#messages li")
            for item in items[shown:]:
                print("message", item.text, flush=True)
            shown = len(items)
            time.sleep(0.05)
        return 0 if shown >= count else 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
