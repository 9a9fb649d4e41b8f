"""The search page (GET /) in a real headless Chromium over a real gateway and embedded index:
type a query and see the expected paper first with its stage scores, apply a date filter that
excludes it, open "Similar papers" from the keyboard, ask for recommendations (more like one
paper, less like another), and supply an API key when the server
wants one. Chromium and chromedriver are Debian's (`make chromium`, a prerequisite of
`make test`); without them the browser tests skip, or fail where PAPERSEARCH_REQUIRE_BROWSER is
set (.ci/run). PAPERSEARCH_PAGE_SCREENSHOT=docs/search-page.png also writes the README's
screenshot there (otherwise it goes to the test's tmp_path only)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from papersearch.client import SearchClient
from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.index.query import Examples
from papersearch.pipeline.backend import LocalBackend
from papersearch.settings import Settings
from tests.gateway_helpers import Servers, scratch_gateways
from tests.ports import free_port

pytestmark = pytest.mark.slow

KEY = "page-key"
SIMILAR = "#results > li:first-child .similar ol.hits > li"
PAPERS = [
    Paper(id="page-bees", title="Honeybee swarms announce themselves acoustically",
          abstract="Microphones inside beehives pick up a rising buzz in the days before a "
                   "honeybee colony swarms.",
          authors=("Ada Apis", "Bo Drone"), published=date(2023, 5, 2),
          categories=("q-bio.PE",), url="https://example.org/papers/page-bees"),
    Paper(id="page-pollinators", title="Bee colony collapse and wild pollinator decline",
          abstract="Honeybee colonies lose foragers to pesticides and parasites; hives weaken "
                   "for weeks before the colony collapses.",
          authors=("Cy Bombus",), published=date(2024, 2, 10), categories=("q-bio.PE",)),
    Paper(id="page-grpc", title="Transcoding gRPC to JSON for browsers",
          abstract="A gateway maps protobuf services onto HTTP paths with JSON bodies.",
          authors=("Dee Proto",), published=date(2024, 3, 1), categories=("cs.NI",)),
    Paper(id="page-dense", title="Dense passage retrieval with contrastive pretraining",
          abstract="Dual encoders trained contrastively retrieve passages for open-domain "
                   "question answering.",
          authors=("Eve Vector", "Fay Index"), published=date(2022, 9, 12),
          categories=("cs.IR", "cs.CL")),
    Paper(id="page-bm25", title="BM25 remains a strong baseline for keyword search",
          abstract="Term-frequency ranking with document length normalisation is hard to beat.",
          authors=("Gus Okapi",), published=date(2021, 1, 5), categories=("cs.IR",)),
    Paper(id="page-proteins", title="Protein structure prediction with attention",
          abstract="Attention over residue pairs predicts how proteins fold.",
          authors=("Hal Fold",), published=date(2024, 6, 20), categories=("q-bio.BM",)),
]


@pytest.fixture(scope="module")
def scratch(sample_settings: Settings, embedder_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Servers, LocalBackend]]:
    with scratch_gateways(sample_settings, Encoder(embedder_dir),
                          tmp_path_factory.mktemp("page-index"), PAPERS) as (servers, backend, _):
        yield servers, backend


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NO_BROWSER = ("no chromium/chromedriver on PATH: `make chromium` installs Debian's chromium and "
              "chromium-driver")
# Skipped before any fixture (the index) is built; where a browser is required, the fixture fails.
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("PAPERSEARCH_REQUIRE_BROWSER"),
    reason=NO_BROWSER)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = CHROMIUM, CHROMEDRIVER
    if not (chromium and driver):
        pytest.fail(NO_BROWSER)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--lang=en-US", "--window-size=1100,1000", "--hide-scrollbars",
                     "--no-first-run",
                     "--disable-extensions", "--disable-background-networking"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(60)
    try:
        yield chrome
    finally:
        chrome.quit()


def wait_for(chrome: webdriver.Chrome, condition: Callable[[], Any], what: str,
             timeout: float = 60.0) -> Any:
    return WebDriverWait(chrome, timeout, poll_frequency=0.1,  # re-rendered meanwhile: again
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda _: condition(), message=what)


def result_ids(chrome: webdriver.Chrome, scope: str = "#results > li") -> list[str]:
    return [item.get_attribute("data-paper-id") or ""
            for item in chrome.find_elements(By.CSS_SELECTOR, scope)]


def submit(chrome: webdriver.Chrome) -> str:
    """Presses Enter in the query box; returns once a new status line is shown."""
    chrome.execute_script("document.getElementById('status').textContent = '';")
    chrome.find_element(By.ID, "query").send_keys(Keys.ENTER)
    status = wait_for(chrome, lambda: (text := chrome.find_element(By.ID, "status").text)
                      and not text.endswith("\u2026") and text, "a search answered")
    return str(status)


def page_at(browser: webdriver.Chrome, scratch: tuple[Servers, LocalBackend],
            address: str) -> tuple[webdriver.Chrome, int]:
    """The browser on the page at ``address`` of a gateway just started over ``scratch``'s
    backend, and that gateway's HTTP port."""
    servers, backend = scratch
    port = free_port()
    servers.start(backend, http_port=port)
    browser.get(f"http://127.0.0.1:{port}{address}")
    return browser, port


def stage(hit: WebElement, name: str) -> str:
    return hit.find_element(By.CSS_SELECTOR, f'[data-stage="{name}"] dd').text


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_page_is_served_with_its_security_headers(scratch: tuple[Servers, LocalBackend]) -> None:
    servers, backend = scratch
    port = free_port()
    servers.start(backend, http_port=port)
    base = f"http://127.0.0.1:{port}"
    status, headers, body = get(base + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert b'<script src="/page/app.js" defer></script>' in body and b"<script>" not in body
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css"),
                       ("icon.svg", "image/svg+xml")]:
        status, headers, _ = get(f"{base}/page/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind), name
    assert get(base + "/page/nope.js")[0] == 404
    assert get(base + "/page/..%2fpage.py")[0] == 404


@needs_browser
def test_search_filter_and_similar_in_a_browser(browser: webdriver.Chrome,
                                                scratch: tuple[Servers, LocalBackend],
                                                tmp_path: Path) -> None:
    servers, backend = scratch
    port = free_port()
    address = servers.start(backend, http_port=port)
    chrome = browser
    chrome.get(f"http://127.0.0.1:{port}/")
    badge = chrome.find_element(By.ID, "health")
    wait_for(chrome, lambda: badge.get_attribute("data-state") == "ready", "health badge ready")
    assert badge.text == "Service: ready"
    query = chrome.find_element(By.ID, "query")
    assert chrome.switch_to.active_element == query  # the page starts in the search box

    # type a query: the bee paper comes first, with its metadata and stage scores
    query.send_keys("why do honeybee hives buzz before swarming")
    status = submit(chrome)
    assert status.startswith(f"{len(PAPERS)} results for"), status
    assert result_ids(chrome)[0] == "page-bees"
    first = chrome.find_element(By.CSS_SELECTOR, "#results > li")
    link = first.find_element(By.CSS_SELECTOR, "h3 a")
    assert link.text == PAPERS[0].title
    assert link.get_attribute("href") == "https://example.org/papers/page-bees"
    assert first.find_element(By.CLASS_NAME, "authors").text == "Ada Apis, Bo Drone"
    assert first.find_element(By.TAG_NAME, "time").text == "2023-05-02"
    assert first.find_element(By.CSS_SELECTOR, ".categories li").text == "q-bio.PE"
    for name in ("dense", "sparse", "fused"):  # hybrid: both stages and their fusion scored it
        assert float(stage(first, name)) != 0.0, name
    assert stage(first, "rerank") == "\u2014"  # no reranker in this backend
    assert "not reranked" in status
    assert not first.find_elements(By.CLASS_NAME, "explanation")  # only when asked

    # "Explain each rank": why the bee paper is first
    chrome.find_element(By.ID, "explain").click()
    submit(chrome)
    first = chrome.find_element(By.CSS_SELECTOR, "#results > li")
    why = first.find_element(By.CLASS_NAME, "explanation")
    why.find_element(By.TAG_NAME, "summary").click()
    assert why.find_element(By.CSS_SELECTOR, '[data-stage="fused"]').text.startswith("Fused: #1,")
    # the server's default ran query feedback: the stages fused were the expanded query's
    assert why.find_element(By.CSS_SELECTOR, '[data-stage="dense"]').text.startswith(
        "Dense (expanded query): #")
    assert why.find_element(By.CLASS_NAME, "fusion").text.startswith("convex: 0.6 x max(dense, 0)")
    terms = why.find_element(By.CLASS_NAME, "terms").text
    assert terms.startswith("BM25 terms: ") and "honeybee" in terms, terms
    chrome.find_element(By.ID, "explain").click()  # off again for the rest

    # "Query feedback": untouched, the box shows what the server's default (on) did
    assert "query feedback" in chrome.find_element(By.ID, "status").text
    assert chrome.find_element(By.ID, "feedback").is_selected()
    assert "fb=" not in chrome.current_url
    # unchecked: asked off, sent with the search, kept in the address, restored from it
    chrome.find_element(By.ID, "feedback").click()
    submit(chrome)
    assert result_ids(chrome)[0] == "page-bees"
    assert "query feedback" not in chrome.find_element(By.ID, "status").text
    assert "fb=0" in chrome.current_url
    chrome.get(chrome.current_url)
    wait_for(chrome, lambda: bool(result_ids(chrome)), "results after reload")
    assert not chrome.find_element(By.ID, "feedback").is_selected()
    # checked again: asked on (fb=1)
    chrome.find_element(By.ID, "feedback").click()
    submit(chrome)
    assert "fb=1" in chrome.current_url
    assert "query feedback" in chrome.find_element(By.ID, "status").text
    chrome.get(chrome.current_url)
    wait_for(chrome, lambda: bool(result_ids(chrome)), "results after reload")
    assert chrome.find_element(By.ID, "feedback").is_selected()
    chrome.find_element(By.ID, "feedback").click()  # off again for the rest (fb=0)

    # a date filter that excludes it
    published_from = chrome.find_element(By.ID, "published-from")
    published_from.send_keys("01012024")  # en-US: month, day, year
    assert published_from.get_attribute("value") == "2024-01-01"
    status = submit(chrome)
    ids = result_ids(chrome)
    assert ids and "page-bees" not in ids, ids
    assert {paper.id for paper in PAPERS if paper.published and
            paper.published >= date(2024, 1, 1)} == set(ids)
    assert all(day.text >= "2024-01-01"
               for day in chrome.find_elements(By.CSS_SELECTOR, "#results time"))
    assert "from=2024-01-01" in chrome.current_url  # the search is in the address

    # clear it, search again, open "Similar papers" on the first hit from the keyboard
    published_from.clear()
    assert published_from.get_attribute("value") == ""
    submit(chrome)
    assert result_ids(chrome)[0] == "page-bees"
    first = chrome.find_element(By.CSS_SELECTOR, "#results > li")
    button = first.find_element(By.CLASS_NAME, "similar-button")
    assert button.get_attribute("aria-expanded") == "false"
    button.send_keys(Keys.ENTER)
    panel = first.find_element(By.CLASS_NAME, "similar")
    wait_for(chrome, lambda: panel.is_displayed()
             and result_ids(chrome, SIMILAR), "similar papers shown")
    similar = result_ids(chrome, SIMILAR)
    assert similar[0] == "page-pollinators" and "page-bees" not in similar, similar
    assert button.get_attribute("aria-expanded") == "true"
    heading = panel.find_element(By.CSS_SELECTOR, "h4")
    assert heading.text == f"Similar to \u201c{PAPERS[0].title}\u201d"
    assert chrome.switch_to.active_element == heading  # focus moves to what was opened
    assert chrome.find_element(By.ID, "status").text.endswith("similar papers.")

    # recommendations: more like the bee paper, less like the pollinator one
    def example(paper_id: str, kind: str) -> WebElement:
        return chrome.find_element(
            By.CSS_SELECTOR, f'#results .example-button[data-kind="{kind}"]'
                             f'[data-paper-id="{paper_id}"]')

    panel = chrome.find_element(By.ID, "recommend")
    assert not panel.is_displayed()
    example("page-pollinators", "negative").click()
    assert panel.is_displayed() and example("page-pollinators", "negative").get_attribute(
        "aria-pressed") == "true"
    recommend = chrome.find_element(By.ID, "recommend-button")
    assert not recommend.is_enabled()  # a negative alone is not enough
    example("page-bees", "positive").send_keys(Keys.ENTER)
    assert recommend.is_enabled()
    assert [li.text for li in chrome.find_elements(By.CSS_SELECTOR, "#positive-examples li")] \
        == [PAPERS[0].title]
    chrome.execute_script("document.getElementById('status').textContent = '';")
    recommend.click()
    wait_for(chrome, lambda: result_ids(chrome, "#recommendations > li"), "recommendations")
    recommended = result_ids(chrome, "#recommendations > li")
    with SearchClient(address, timeout_s=30) as client:
        expected = client.similar(Examples(("page-bees",), ("page-pollinators",)))
    assert recommended == [hit.paper.id for hit in expected.hits]  # the API's answer, in order
    assert set(recommended) == {p.id for p in PAPERS} - {"page-bees", "page-pollinators"}
    assert chrome.find_element(By.ID, "status").text == f"{len(recommended)} recommendations."
    chrome.find_element(By.ID, "clear-examples").click()
    assert not panel.is_displayed()
    assert example("page-bees", "positive").get_attribute("aria-pressed") == "false"

    errors = [entry for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []  # no CSP violation, no failed request, no script error

    chrome.execute_script("window.scrollTo(0, 0); document.activeElement.blur();")
    chrome.set_window_size(1000, 1250)
    shot = tmp_path / "search-page.png"
    assert chrome.save_screenshot(str(shot))
    target = os.environ.get("PAPERSEARCH_PAGE_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)


@needs_browser
def test_page_asks_for_the_api_key_the_server_wants(browser: webdriver.Chrome,
                                                    scratch: tuple[Servers, LocalBackend]) -> None:
    servers, backend = scratch
    port = free_port()
    servers.start(backend, http_port=port, api_keys=[SecretStr(KEY)])
    chrome = browser
    chrome.get(f"http://127.0.0.1:{port}/?q=bm25+keyword+search")  # a search from the address
    error = chrome.find_element(By.ID, "error")
    wait_for(chrome, error.is_displayed, "the error shown")
    assert error.text.startswith("UNAUTHENTICATED: ")
    assert chrome.find_element(By.ID, "key-box").get_attribute("open") is not None
    chrome.find_element(By.ID, "api-key").send_keys(KEY)
    chrome.find_element(By.ID, "search-button").click()
    wait_for(chrome, lambda: not error.is_displayed() and result_ids(chrome), "results")
    assert result_ids(chrome)[0] == "page-bm25"
    # kept for this tab only, and never in the address
    assert chrome.execute_script(
        "return sessionStorage.getItem('papersearch-api-key')") == KEY
    assert KEY not in chrome.current_url


# Slows the page's own API calls by path (window.slow: path -> ms) and records the calls a
# newer search aborted (window.aborted): late answers on demand, as on a loaded server.
SLOW_FETCH = """
window.slow = {}; window.aborted = 0;
const fetched = window.fetch.bind(window);
window.fetch = async (path, options = {}) => {
  let answered = false;
  if (options.signal) {
    options.signal.addEventListener("abort", () => { if (!answered) window.aborted += 1; });
  }
  try {
    const wait = window.slow[path] || 0;
    if (wait) await new Promise((done) => setTimeout(done, wait));
    return await fetched(path, options);
  } finally {
    answered = true;
  }
};
"""


@needs_browser
def test_page_history_late_answers_and_a_bad_key(browser: webdriver.Chrome,
                                                 scratch: tuple[Servers, LocalBackend]) -> None:
    """Each search is a history entry that Back runs again (the address was replaced: Back
    left the page, and "explain" was not kept); a "Similar papers" answer that arrives after
    a newer search no longer overwrites its status line; a superseded search is aborted; a key
    the browser cannot send is reported as such (it was "the service could not be reached")."""
    chrome, port = page_at(browser, scratch, "/?q=honeybee+swarms&explain=1")
    wait_for(chrome, lambda: result_ids(chrome), "the search in the address ran")
    assert result_ids(chrome)[0] == "page-bees"
    assert chrome.find_element(By.ID, "explain").is_selected()
    query = chrome.find_element(By.ID, "query")
    query.clear()
    query.send_keys("bm25 keyword baseline")
    submit(chrome)
    assert result_ids(chrome)[0] == "page-bm25" and "q=bm25" in chrome.current_url
    chrome.back()
    wait_for(chrome, lambda: result_ids(chrome)[:1] == ["page-bees"], "Back ran the first search")
    assert query.get_attribute("value") == "honeybee swarms" and "explain=1" in chrome.current_url
    chrome.forward()
    wait_for(chrome, lambda: result_ids(chrome)[:1] == ["page-bm25"], "Forward ran it again")

    chrome.execute_script(SLOW_FETCH + "window.slow['/papersearch.v1.SearchService/"
                          "SimilarPapers'] = 1500;")
    chrome.find_element(By.CSS_SELECTOR, "#results > li:first-child .similar-button").click()
    query.clear()
    query.send_keys("protein folding attention")
    status = submit(chrome)
    assert status.startswith(f"{len(PAPERS)} results for \u201cprotein folding"), status
    chrome.execute_script("return new Promise((done) => setTimeout(done, 2500));")
    assert chrome.find_element(By.ID, "status").text == status  # the late similar: not shown
    assert not chrome.find_element(By.ID, "error").is_displayed()
    assert chrome.execute_script("return window.aborted") == 1  # the new search aborted it

    chrome.execute_script("window.aborted = 0;"
                          "window.slow['/papersearch.v1.SearchService/Search'] = 1000;")
    query.send_keys(Keys.ENTER)
    query.send_keys(" again", Keys.ENTER)
    wait_for(chrome, lambda: chrome.execute_script("return window.aborted") == 1,
             "the first of two searches aborted")
    wait_for(chrome, lambda: chrome.find_element(By.ID, "status").text.startswith(
        f"{len(PAPERS)} results for \u201cprotein folding attention again"), "the second answered")
    assert chrome.execute_script("return window.aborted") == 1

    chrome.find_element(By.ID, "key-box").click()
    chrome.find_element(By.ID, "api-key").send_keys("key\u2019s")
    query.send_keys(Keys.ENTER)
    error = chrome.find_element(By.ID, "error")
    wait_for(chrome, error.is_displayed, "the key refused")
    assert "other than printable ASCII" in error.text
    chrome.execute_script("sessionStorage.clear();")


@needs_browser
def test_page_after_back_during_a_search_and_an_answer_that_is_not_json(
    browser: webdriver.Chrome, scratch: tuple[Servers, LocalBackend],
) -> None:
    """Back to the empty page while a search was in flight left the form aria-busy for good;
    a 200 answer that is not JSON (a proxy's page) showed "undefined: Cannot read properties of
    null" instead of saying what was wrong."""
    chrome, port = page_at(browser, scratch, "/")
    form = chrome.find_element(By.ID, "search-form")
    # searches that never answer: the one in flight when Back comes
    chrome.execute_script("window.fetch = () => new Promise(() => {});")
    chrome.find_element(By.ID, "query").send_keys("honeybee swarms", Keys.ENTER)
    wait_for(chrome, lambda: form.get_attribute("aria-busy") == "true", "the search in flight")
    chrome.back()
    wait_for(chrome, lambda: form.get_attribute("aria-busy") is None, "not busy after Back")
    assert chrome.find_element(By.ID, "status").text == ""
    chrome.execute_script(
        "window.fetch = async () => new Response('<html>portal</html>', {status: 200});")
    chrome.find_element(By.ID, "query").send_keys("honeybee swarms", Keys.ENTER)
    error = chrome.find_element(By.ID, "error")
    wait_for(chrome, error.is_displayed, "the error shown")
    assert error.text == "UNKNOWN: the server's answer was not JSON"


@needs_browser
def test_page_sent_before_its_script_ran_and_recommendations_superseded(
    browser: webdriver.Chrome, scratch: tuple[Servers, LocalBackend],
) -> None:
    """A form sent as a plain GET (before app.js ran) lost an unticked "Rerank": the address
    had no rerank parameter, which the page reads as ticked; the page now rewrites such an
    address as its own (one history entry). A second "Recommend" (or Clear) while one is in
    flight aborts it, as a newer search does."""
    chrome, port = page_at(browser, scratch, "/")
    chrome.find_element(By.ID, "query").send_keys("honeybee swarms")
    chrome.find_element(By.ID, "rerank").click()
    chrome.find_element(By.ID, "feedback").click()
    assert not chrome.find_element(By.ID, "rerank").is_selected()
    chrome.execute_script("document.getElementById('search-form').submit();")  # no script
    wait_for(chrome, lambda: result_ids(chrome)[:1] == ["page-bees"], "the plain GET's search")
    assert not chrome.find_element(By.ID, "rerank").is_selected()
    assert chrome.find_element(By.ID, "feedback").is_selected()
    address = chrome.current_url
    assert address.endswith("/?q=honeybee+swarms&mode=MODE_HYBRID&k=10&rerank=0&fb=1"), address
    chrome.find_element(By.ID, "rerank").click()
    chrome.execute_script("document.getElementById('search-form').submit();")
    wait_for(chrome, lambda: "rerank" not in chrome.current_url, "the ticked box's address")
    assert chrome.find_element(By.ID, "rerank").is_selected()

    wait_for(chrome, lambda: result_ids(chrome)[:1] == ["page-bees"], "results to choose from")
    chrome.execute_script(SLOW_FETCH + "window.slow['/papersearch.v1.SearchService/"
                          "SimilarPapers'] = 1000;")
    chrome.find_element(
        By.CSS_SELECTOR, '#results .example-button[data-kind="positive"]'
                         '[data-paper-id="page-bees"]').click()
    recommend = chrome.find_element(By.ID, "recommend-button")
    recommend.click()
    recommend.click()
    wait_for(chrome, lambda: chrome.execute_script("return window.aborted") == 1,
             "the first of two recommendations aborted")
    wait_for(chrome, lambda: result_ids(chrome, "#recommendations > li"), "the second answered")
    recommend.click()
    chrome.find_element(By.ID, "clear-examples").click()
    wait_for(chrome, lambda: chrome.execute_script("return window.aborted") == 2,
             "Clear aborted the recommendation in flight")
    assert result_ids(chrome, "#recommendations > li") == []
    assert chrome.execute_script("return document.activeElement.id") == "results-heading"


# Records the headers of the page's own API calls (window.headers), after SLOW_FETCH.
SENT_HEADERS = """
window.headers = [];
const slowed = window.fetch;
window.fetch = (path, options = {}) => {
  window.headers.push(Object.keys(options.headers || {}).map((name) => name.toLowerCase()));
  return slowed(path, options);
};
"""


@needs_browser
def test_page_gives_the_status_line_back_and_sends_no_deadline(
    browser: webdriver.Chrome, scratch: tuple[Servers, LocalBackend],
) -> None:
    """Clear while a search ran took the status line from it for good ("Searching…" stayed
    after its answer; a failed one showed nothing); marking a recommended paper dropped the
    focus to the page's body with the button pressed; the page sent x-timeout-ms 30000, so the
    server's serve.default_deadline_s never applied to it. The page now sends none, and gives
    up on an answer past the server's serve.max_deadline_s, which the page it serves states."""
    servers, backend = scratch
    port = free_port()
    servers.start(backend, http_port=port, max_deadline_s=12.0)
    chrome = browser
    chrome.get(f"http://127.0.0.1:{port}/?q=honeybee+swarms")
    wait_for(chrome, lambda: result_ids(chrome)[:1] == ["page-bees"], "the first search")
    assert chrome.execute_script(
        "return document.documentElement.dataset.maxDeadlineMs") == "12000"
    chrome.execute_script(SLOW_FETCH + SENT_HEADERS
                          + "window.slow['/papersearch.v1.SearchService/Search'] = 1500;")
    chrome.find_element(
        By.CSS_SELECTOR, '#results .example-button[data-kind="positive"]'
                         '[data-paper-id="page-bees"]').click()
    query = chrome.find_element(By.ID, "query")
    query.clear()
    query.send_keys("bm25 keyword baseline", Keys.ENTER)  # answers in 1.5 s
    status = chrome.find_element(By.ID, "status")
    wait_for(chrome, lambda: status.text == "Searching\u2026", "the search in flight")
    chrome.find_element(By.ID, "recommend-button").click()
    wait_for(chrome, lambda: status.text.endswith("recommendations."), "the recommendations")
    chrome.find_element(By.ID, "clear-examples").click()  # the search has not answered yet
    wait_for(chrome, lambda: status.text.startswith(
        f"{len(PAPERS)} results for \u201cbm25 keyword baseline"), "the search's own line")
    assert result_ids(chrome)[0] == "page-bm25"

    chrome.execute_script("window.slow = {};")
    chrome.find_element(
        By.CSS_SELECTOR, '#results .example-button[data-kind="positive"]'
                         '[data-paper-id="page-bm25"]').click()
    chrome.find_element(By.ID, "recommend-button").click()
    wait_for(chrome, lambda: result_ids(chrome, "#recommendations > li"), "recommendations")
    chrome.find_element(
        By.CSS_SELECTOR, '#recommendations > li:first-child .example-button[data-kind="positive"]'
    ).send_keys(Keys.ENTER)
    assert result_ids(chrome, "#recommendations > li") == []  # for the examples before
    assert chrome.execute_script("return document.activeElement.id") == "recommend-button"
    assert status.text.startswith(f"{len(PAPERS)} results for \u201cbm25 keyword baseline")
    sent = chrome.execute_script("return window.headers")
    assert len(sent) == 3 and all("x-timeout-ms" not in names for names in sent), sent
    chrome.find_element(By.ID, "clear-examples").click()


# /readyz calls that never answer unless their signal aborts them (a frozen server).
HUNG_READYZ = """
const answering = window.fetch;
window.fetch = (path, options = {}) => path !== "/readyz" ? answering(path, options)
  : new Promise((_, reject) => options.signal.addEventListener(
      "abort", () => reject(options.signal.reason), {once: true}));
"""


@needs_browser
def test_page_aborts_similar_papers_of_replaced_results_and_a_hung_health_check(
    browser: webdriver.Chrome, scratch: tuple[Servers, LocalBackend],
) -> None:
    """"Similar papers" asked for on results that a search in flight then replaced kept
    running on the server; those of a recommended paper (not replaced) must not be aborted;
    a /readyz that never answered left the badge at "ready"; zero results said "with these
    filters" when there were none."""
    chrome, port = page_at(browser, scratch, "/?q=honeybee+swarms")
    wait_for(chrome, lambda: result_ids(chrome)[:1] == ["page-bees"], "the first search")
    chrome.find_element(
        By.CSS_SELECTOR, '#results .example-button[data-kind="positive"]'
                         '[data-paper-id="page-bees"]').click()
    chrome.find_element(By.ID, "recommend-button").click()
    wait_for(chrome, lambda: result_ids(chrome, "#recommendations > li"), "recommendations")
    chrome.execute_script(SLOW_FETCH + "window.slow['/papersearch.v1.SearchService/Search'] = "
                          "1500; window.slow['/papersearch.v1.SearchService/SimilarPapers'] = "
                          "3000;")
    query = chrome.find_element(By.ID, "query")
    query.clear()
    query.send_keys("bm25 keyword baseline", Keys.ENTER)
    chrome.find_element(By.CSS_SELECTOR, "#results > li:first-child .similar-button").click()
    chrome.find_element(By.CSS_SELECTOR,
                        "#recommendations > li:first-child .similar-button").click()
    wait_for(chrome, lambda: result_ids(chrome)[:1] == ["page-bm25"], "the search's answer")
    assert chrome.execute_script("return window.aborted") == 1  # the replaced result's only
    recommended = "#recommendations > li:first-child .similar ol.hits > li"
    wait_for(chrome, lambda: chrome.find_elements(By.CSS_SELECTOR, recommended),
             "the recommended paper's similar papers")
    assert chrome.execute_script("return window.aborted") == 1
    chrome.find_element(By.ID, "clear-examples").click()

    chrome.execute_script("window.slow = {};")
    query.clear()
    query.send_keys("honeybee", Keys.ENTER)
    wait_for(chrome, lambda: result_ids(chrome), "an answer")
    chrome.execute_script("document.getElementById('published-to').value = '2000-01-01';")
    status = submit(chrome)
    assert status.startswith("No results for \u201choneybee\u201d with these filters ("), status
    chrome.execute_script("document.getElementById('published-to').value = '';"
                          "document.getElementById('categories').value = 'no.such';")
    assert submit(chrome).startswith("No results for \u201choneybee\u201d with these filters")
    chrome.execute_script("document.getElementById('categories').value = '';"
                          "document.getElementById('mode').value = 'MODE_SPARSE';")
    query.clear()
    query.send_keys("zzqxv")  # no BM25 term of the index: no hit, and no filter set
    assert submit(chrome).startswith("No results for \u201czzqxv\u201d (BM25 only, ")
    chrome.execute_script("document.getElementById('mode').value = 'MODE_HYBRID';")

    badge = chrome.find_element(By.ID, "health")
    assert badge.get_attribute("data-state") == "ready"
    chrome.execute_script(HUNG_READYZ + "health();")
    wait_for(chrome, lambda: badge.get_attribute("data-state") == "down",
             "the hung check given up", timeout=15.0)
    assert badge.text == "Service: unreachable"


SENT_BODIES = """
window.sent = [];
const sending = window.fetch;
window.fetch = (path, options = {}) => {
  window.sent.push([path, JSON.parse(options.body || "null")]);
  return sending(path, options);
};
"""


@needs_browser
def test_page_status_filters_blank_query_and_long_abstracts(
    browser: webdriver.Chrome, scratch: tuple[Servers, LocalBackend],
) -> None:
    """"Similar papers" asked under the filter typed in the form since, not the one of the
    results on screen; the status line named the mode picked after a search was sent; a
    "Similar papers" clicked on old results while a search ran left the status line stuck on
    "Finding papers similar to ..."; a query of spaces did nothing; a long abstract was cut to
    three lines with no way to read the rest; an address's values the form could not take
    were replaced by its defaults without a word."""
    chrome, port = page_at(browser, scratch, "/?q=honeybee+swarms&from=2023-01-01")
    wait_for(chrome, lambda: result_ids(chrome)[:1] == ["page-bees"], "the filtered search")
    chrome.execute_script(SENT_BODIES)
    chrome.find_element(By.ID, "published-from").clear()  # typed, not searched
    chrome.find_element(By.CSS_SELECTOR, "#results > li:first-child .similar-button").click()
    wait_for(chrome, lambda: chrome.find_elements(By.CSS_SELECTOR, SIMILAR), "similar papers")
    (path, body), = chrome.execute_script("return window.sent")
    assert path.endswith("/SimilarPapers") and body["filter"] == {"published_from": "2023-01-01"}

    chrome.execute_script(SLOW_FETCH + "window.slow['/papersearch.v1.SearchService/Search'] = 1500;"
                          "window.slow['/papersearch.v1.SearchService/SimilarPapers'] = 3000;")
    query = chrome.find_element(By.ID, "query")
    query.clear()
    query.send_keys("protein folding attention", Keys.ENTER)
    chrome.find_element(By.CSS_SELECTOR, "#mode option[value='MODE_SPARSE']").click()
    chrome.find_element(By.CSS_SELECTOR, "#results > li:nth-child(2) .similar-button").click()
    wait_for(chrome, lambda: result_ids(chrome)[:1] == ["page-proteins"], "the new results")
    wait_for(chrome, lambda: "results for \u201cprotein folding attention\u201d (Hybrid" in
             chrome.find_element(By.ID, "status").text, "the search's own status line")
    chrome.execute_script("return new Promise((done) => setTimeout(done, 3500));")
    assert "results for \u201cprotein folding" in chrome.find_element(By.ID, "status").text

    query.clear()
    query.send_keys("   ", Keys.ENTER)
    error = chrome.find_element(By.ID, "error")
    wait_for(chrome, error.is_displayed, "the blank query refused")
    assert error.text == "INVALID_ARGUMENT: the query is blank: type what to search for"

    long = "A sentence about bees that goes on for a while. " * 12
    answer = {"hits": [{"paper": {"paper_id": "long", "title": "Long", "abstract": long},
                        "score": 0.5, "stages": {}}]}
    chrome.execute_script("window.fetch = async () => new Response(arguments[0], "
                          "{status: 200});", json.dumps(answer))
    query.clear()
    query.send_keys("bees", Keys.ENTER)
    toggle = wait_for(chrome, lambda: chrome.find_elements(By.CSS_SELECTOR, ".abstract-toggle"),
                      "the long abstract's toggle")[0]
    hidden = "const p = document.getElementById('hit-1-abstract');" \
             "return p.scrollHeight - p.clientHeight;"  # the clamped lines' height
    assert chrome.execute_script(hidden) > 0
    toggle.send_keys(Keys.ENTER)
    assert toggle.get_attribute("aria-expanded") == "true"
    assert chrome.execute_script(hidden) == 0

    # a shared address with values the form cannot take: said, not dropped without a word
    chrome.get(f"http://127.0.0.1:{port}/?q=honeybee+swarms&from=2024-1-5&mode=MODE_BOGUS&k=10")
    wait_for(chrome, lambda: result_ids(chrome)[:1] == ["page-bees"], "the search, unfiltered")
    assert chrome.find_element(By.ID, "error").text == (
        "INVALID_ARGUMENT: the address's mode=MODE_BOGUS, from=2024-1-5 are not a value this "
        "form takes: left out (the defaults apply)")
    assert "from=" not in chrome.current_url and "mode=MODE_HYBRID" in chrome.current_url
    chrome.get(f"http://127.0.0.1:{port}/?q=honeybee%0Aswarms")  # a box drops line breaks
    wait_for(chrome, lambda: result_ids(chrome), "the search of what the box kept")
    assert not chrome.find_element(By.ID, "error").is_displayed()


# Requests that never answer unless aborted; the browser's own time limit shortened to 0.3 s
# for requests made once window.short is set; only aborts of a newer action are counted (not
# a time limit's). AbortSignal.any hidden, as browsers without it have none.
HANGING_FETCH = """
window.aborted = 0; window.short = false;
const timeout = AbortSignal.timeout;
AbortSignal.timeout = (ms) => timeout.call(AbortSignal, window.short ? 300 : ms);
AbortSignal.any = undefined;
window.fetch = (path, options = {}) => new Promise((_, fail) => {
  options.signal.addEventListener("abort", () => {
    if (options.signal.reason.name === "AbortError") window.aborted += 1;
    fail(options.signal.reason);
  });
});
"""


@needs_browser
def test_page_skip_link_focus_short_abstracts_and_answers_that_never_come(
    browser: webdriver.Chrome, scratch: tuple[Servers, LocalBackend],
) -> None:
    """"Skip to results" ran the search again and reset the form (following a link within the
    page is a history move); an answer to "Similar papers" or "Recommend" that came while the
    user typed a new query moved the focus to its heading, so keys were lost; an abstract under
    240 characters could be cut to three lines in a narrow window with no toggle; recommendations
    stayed on screen for examples since changed; a request whose answer never came left the
    page waiting for good, and "Similar papers" of replaced results went on."""
    chrome, port = page_at(browser, scratch, "/?q=honeybee+swarms")
    wait_for(chrome, lambda: result_ids(chrome)[:1] == ["page-bees"], "the search ran")
    chrome.execute_script(SENT_BODIES)
    query = chrome.find_element(By.ID, "query")
    query.send_keys(" edited")
    chrome.find_element(By.ID, "explain").click()
    skip = chrome.find_element(By.CSS_SELECTOR, "a.skip")
    chrome.execute_script("arguments[0].focus();", skip)
    skip.send_keys(Keys.ENTER)
    wait_for(chrome, lambda: chrome.current_url.endswith("#results-heading"), "skipped")
    chrome.execute_script("return new Promise((done) => setTimeout(done, 500));")
    assert chrome.execute_script("return window.sent") == []  # no search ran again
    assert query.get_attribute("value") == "honeybee swarms edited"
    assert chrome.find_element(By.ID, "explain").is_selected()

    chrome.execute_script(SLOW_FETCH + "window.slow['/papersearch.v1.SearchService/"
                          "SimilarPapers'] = 1000;")
    chrome.find_element(By.CSS_SELECTOR, "#results > li:first-child .similar-button").click()
    query.click()  # the user goes on typing while the answer is on its way
    ActionChains(chrome).send_keys(" more").perform()
    wait_for(chrome, lambda: chrome.find_elements(By.CSS_SELECTOR, SIMILAR), "similar papers")
    ActionChains(chrome).send_keys(" words").perform()
    assert chrome.switch_to.active_element == query
    assert query.get_attribute("value") == "honeybee swarms edited more words"

    chrome.find_element(
        By.CSS_SELECTOR, '#results > li:first-child .example-button[data-kind="positive"]').click()
    chrome.find_element(By.ID, "recommend-button").click()
    wait_for(chrome, lambda: result_ids(chrome, "#recommendations > li"), "recommendations")
    assert chrome.find_element(By.ID, "status").text.endswith("recommendations.")
    chrome.find_element(
        By.CSS_SELECTOR, '#results > li:nth-child(2) .example-button[data-kind="positive"]').click()
    assert result_ids(chrome, "#recommendations > li") == []  # asked for other examples
    # the status line back to the similar papers it was taken from, still on screen
    assert chrome.find_element(By.ID, "status").text == "5 similar papers."

    short = "Bees buzz before they swarm, and the buzz rises for days. " * 3  # < 240 chars
    answer = {"hits": [{"paper": {"paper_id": "short", "title": "Short", "abstract": short},
                        "score": 0.5, "stages": {}}]}
    chrome.execute_script("window.fetch = async () => new Response(arguments[0], "
                          "{status: 200});", json.dumps(answer))
    chrome.set_window_size(400, 1000)
    try:
        query.clear()
        query.send_keys("bees", Keys.ENTER)
        toggle = wait_for(chrome, lambda: [t for t in chrome.find_elements(
            By.CSS_SELECTOR, ".abstract-toggle") if t.is_displayed()], "the toggle, 400 px")[0]
        hidden = "const p = document.getElementById('hit-1-abstract');" \
                 "return p.scrollHeight - p.clientHeight;"
        assert chrome.execute_script(hidden) > 0
        toggle.send_keys(Keys.ENTER)
        assert chrome.execute_script(hidden) == 0 and toggle.is_displayed()
        toggle.send_keys(Keys.ENTER)
    finally:
        chrome.set_window_size(1100, 1000)
    wait_for(chrome, lambda: not toggle.is_displayed(), "no toggle where nothing is cut")

    chrome.execute_script(HANGING_FETCH)
    chrome.find_element(By.CSS_SELECTOR, "#results > li:first-child .similar-button").click()
    chrome.execute_script("window.short = true;")  # the search that follows gives up soon
    query.send_keys(Keys.ENTER)  # a new search aborts "Similar papers" of the old results
    wait_for(chrome, lambda: chrome.execute_script("return window.aborted") == 1,
             "the similar papers aborted")
    error = chrome.find_element(By.ID, "error")
    wait_for(chrome, error.is_displayed, "the search given up")
    assert error.text == "DEADLINE_EXCEEDED: no answer within 35 s: try again"
    assert chrome.find_element(By.ID, "search-form").get_attribute("aria-busy") is None
    assert chrome.execute_script("return window.aborted") == 1  # the time limit: not counted


@needs_browser
def test_page_relevance_cut_off(browser: webdriver.Chrome,
                                scratch: tuple[Servers, LocalBackend]) -> None:
    """The page had no control for SearchRequest.min_relevance: a query about something the
    index does not hold listed every paper, and the status line's count of hits the cut-off
    hid never showed. It is a field of the form, kept in the address as min=."""
    chrome, _ = page_at(browser, scratch, "/?q=chocolate+cake+recipe&min=0.25")
    status = wait_for(chrome, lambda: "No results" in (
        text := chrome.find_element(By.ID, "status").text) and text, "the cut-off search")
    assert result_ids(chrome) == []
    assert status.startswith("No results for \u201cchocolate cake recipe\u201d (Hybrid")
    assert status.endswith(f", {len(PAPERS)} hidden by the relevance cut-off).")
    assert chrome.find_element(By.ID, "min-relevance").get_attribute("value") == "0.25"

    chrome.execute_script(SENT_BODIES)
    cutoff = chrome.find_element(By.ID, "min-relevance")
    cutoff.clear()  # blank: off
    assert "hidden" not in submit(chrome)
    assert len(result_ids(chrome)) == len(PAPERS)
    query = chrome.find_element(By.ID, "query")
    query.clear()
    query.send_keys("honeybee swarms")
    cutoff.send_keys("0.27")  # any cosine: a step of 0.05 had the browser refuse to send it
    status = submit(chrome)
    kept = result_ids(chrome)
    assert kept[0] == "page-bees" and "page-grpc" not in kept
    assert status.endswith(f", {len(PAPERS) - len(kept)} hidden by the relevance cut-off).")
    assert "min=0.27" in chrome.current_url
    bodies = [body for _, body in chrome.execute_script("return window.sent")]
    assert "min_relevance" not in bodies[0] and bodies[1]["min_relevance"] == 0.27

    chrome.find_element(By.CSS_SELECTOR, "#mode option[value='MODE_SPARSE']").click()
    query.send_keys(Keys.ENTER)  # the server's refusal, said
    error = chrome.find_element(By.ID, "error")
    wait_for(chrome, error.is_displayed, "the cut-off refused with BM25 only")
    assert error.text.startswith("INVALID_ARGUMENT: min_relevance needs mode dense or hybrid")
