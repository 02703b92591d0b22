"""A real-browser driver for the FiftyOne App, for end-to-end tests.

Pytest fixtures start the App server (``fo.launch_app(..., remote=True)`` in
the test process, so ``session.view`` / ``session.selected`` follow what the
browser does) and a headless Chromium driven by selenium; :class:`App` wraps
the driver with helpers that find things the way a user does: by visible
text, label or tooltip, not by CSS paths, so the tests survive changes of our
panel's layout. The few selectors used are FiftyOne's own ``data-cy`` test
hooks (its e2e tests use them) and MUI / Plotly class names.

tests/conftest.py registers the fixtures for every test module (one
Chromium and one App server a test process, whatever the number of browser
files). Use them from a test module::

    @pytest.fixture(scope="module")
    def app_dataset(tmp_path_factory):
        return shapes_dataset(tmp_path_factory.mktemp("ds"), num_samples=60)

    def test_something(app, app_dataset):
        app.open_dataset(app_dataset.name)
        panel = app.open_panel("AI Search")
        app.fill("Prompt", "a red circle", root=panel)
        app.click_button("Search", root=panel)

``app_session`` needs an ``app_dataset`` fixture (module scope) in the test
module. Waits poll for a condition (default :data:`TIMEOUT` s: the machines
are slow and shared); nothing sleeps a fixed time where a condition can be
waited for.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar, Union

import psutil
import pytest

try:  # selenium is optional: without it the browser tests skip (or fail in CI)
    from selenium import webdriver
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        ElementNotInteractableException,
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.select import Select
except ImportError:  # pragma: no cover - exercised where selenium is missing
    webdriver = None
    WebElement = Any  # type: ignore[misc,assignment]

T = TypeVar("T")

#: default seconds to wait for anything
TIMEOUT = float(os.environ.get("AIS_BROWSER_TIMEOUT", "45"))

#: the longest pause between two polls of a wait (they start shorter)
MAX_POLL_INTERVAL = 0.5

#: seconds for the App server to listen (FiftyOne's own wait), on a quiet
#: machine; stretched by the load (:func:`scaled`)
SERVER_START_TIMEOUT = 60.0

CHROMIUM = os.environ.get("AIS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AIS_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
INSTALL_HINT = (
    "install them with `apt-get install -y chromium chromium-driver` and "
    "`pip install selenium`"
)

DEFAULT_ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "browser"

# Not errors of ours: the App loads Google fonts (offline here), and its
# router throws "entry is loading" when something reads the location while a
# navigation is under way (seen now and then as the panel re-renders; the
# page carries on unharmed)
_CONSOLE_NOISE = re.compile(
    r"fonts\.googleapis\.com|favicon\.ico|Uncaught Error: entry is loading")

# Elements a user can click; a click on text inside one goes to the closest
_CLICKABLE = ("button, [role=button], a, [role=tab], [role=menuitem], "
              "[role=option], label, [data-cy^=new-panel-option-]")

# Form controls a label can belong to
_CONTROLS = ("input:not([type=hidden]), textarea, select, [role=combobox], "
             "[role=slider], [role=radiogroup], [role=checkbox]")

# Shared JavaScript: visibility, an element's own text, elements by text.
# Material icons are ligatures (the text "travel_explore" draws the icon),
# so a button's full textContent is "travel_exploreAI Search": matching an
# element's OWN text nodes avoids that.
#: what a notification (``ctx.ops.notify``) is on the page
_NOTIFICATIONS_JS = r"""
const NOTE_SELECTOR =
  "[role=alert], .MuiSnackbar-root, .MuiAlert-root, [id^=notistack]";
"""

_JS_LIB = r"""
const norm = s => (s || "").replace(/[\s\u200b]+/g, " ").trim();
const visible = e => {
  if (!e.getClientRects().length) return false;
  const st = getComputedStyle(e);
  return st.visibility !== "hidden" && st.display !== "none" && st.opacity !== "0";
};
// on top at its centre: false for items clipped away by an overflow box
const hittable = e => {
  const r = e.getBoundingClientRect();
  const h = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return !!h && (h === e || e.contains(h));
};
const ownText = e => norm([...e.childNodes].filter(n => n.nodeType === 3)
                          .map(n => n.textContent).join(""));
// text: a string (exact, or a substring) or {re, flags} from a Python regex
const matches = (s, text, exact) => text && text.re !== undefined
  ? new RegExp(text.re, text.flags).test(s) : exact ? s === text : s.includes(text);
// the text first, visibility (layout and computed style) only of the few
// that match: a poll runs this over the whole page, every element
const byText = (root, text, exact) => {
  const out = [];
  for (const e of root.querySelectorAll("*")) {
    const names = [ownText(e), norm(e.getAttribute("aria-label")),
                   norm(e.getAttribute("title"))];
    if (names.some(s => s && matches(s, text, exact)) && visible(e)) out.push(e);
  }
  return out;
};
"""


# -- availability ---------------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """Skips the test, or fails it in CI, where a browser test must never
    silently stop running."""
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: browser tests must run)",
                    pytrace=False)
    pytest.skip(reason)


def require_browser() -> None:
    """Skips (fails in CI) unless selenium, chromium and chromedriver are
    all there."""
    missing = []
    if webdriver is None:
        missing.append("selenium")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) or shutil.which(path)):
            missing.append(path)
    if missing:
        unavailable(f"Browser test needs {', '.join(missing)}: {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_artifacts() -> Path:
    """Where screenshots go: ``$AIS_BROWSER_ARTIFACTS`` or
    ``tests/artifacts/browser``."""
    path = Path(os.environ.get("AIS_BROWSER_ARTIFACTS") or DEFAULT_ARTIFACTS)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator["webdriver.Chrome"]:
    """A headless Chromium with the browser console log enabled."""
    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as e:
        unavailable(f"Chromium did not start ({e.msg}); {INSTALL_HINT}")
    try:
        yield driver
    finally:
        driver.quit()


class AppServer:
    """The App server of this test process, started when first needed and
    kept for the next browser file: a server's start (a process that
    imports FiftyOne and its server) is paid once a process (an xdist
    worker), and the plugin's Python code in it (the model it loaded)
    stays warm.

    The server is a child process that inherits this process's environment
    (the private mongod and plugins dir of ``isolated_fiftyone``); the
    plugin's Python code, and any worker it spawns, runs there. A module
    whose fixtures set FiftyOne's environment otherwise (e.g.
    ``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS``) gets a server started in it:
    :meth:`session` starts another when ``FIFTYONE_*`` differ from the
    running server's.
    """

    def __init__(self) -> None:
        self._session: Any = None
        self._environment: dict = {}

    @staticmethod
    def _fiftyone_environment() -> dict:
        return {k: v for k, v in os.environ.items() if k.startswith("FIFTYONE_")}

    def session(self, dataset: Any) -> Any:
        """A remote ``fo.Session`` on ``dataset``, on a free port of
        127.0.0.1, whose server runs in this process's environment now.
        The session subscribes to the server's state, so ``session.view`` /
        ``selected`` follow the browser (within ~1 s)."""
        environment = self._fiftyone_environment()
        if self._session is not None and environment != self._environment:
            self.close()
        if self._session is None:
            self._session = self._launch(dataset)
            self._environment = environment
        else:
            self.show(dataset)
        return self._session

    def show(self, dataset: Any) -> None:
        """Sets the session's dataset (None: none). The session's client
        connects to the server in a thread of its own (again after a lost
        connection): a state sent before it is connected is refused
        ("Client is not connected"), and sent again."""
        deadline = time.monotonic() + scaled(TIMEOUT)
        while True:
            try:
                self._session.dataset = dataset
                return
            except RuntimeError as e:
                if "not connected" not in str(e) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    @staticmethod
    def _launch(dataset: Any) -> Any:
        import fiftyone as fo
        import fiftyone.core.service as fos

        _patient_ping()
        with pytest.MonkeyPatch.context() as mp:
            # FiftyOne gives its server 60 s to listen, whatever the load:
            # on a loaded machine the server's imports alone take longer
            wait = fos.Service._wait_for_child_port
            mp.setattr(fos.Service, "_wait_for_child_port",
                       functools.partialmethod(
                           wait, timeout=scaled(SERVER_START_TIMEOUT)))
            session = fo.launch_app(dataset, remote=True,
                                    address="127.0.0.1", port=free_port())
        _resend_the_latest_state(session)
        return session

    def close(self) -> None:
        if self._session is not None:
            # stops the server child (it waits on it) once no session uses it
            self._session.close()
            self._session = None


def _resend_the_latest_state(session: Any) -> None:
    """Makes the session's client, when it connects again, send the App
    the state it has now, not its first. FiftyOne's client sends the state
    it was opened with each time it connects (``Client.open``), and the
    server makes it the App's: a session that lost the server once (a
    ping that found it not answering yet, under load) reset the App's view
    to the whole dataset 10 s later, over the view a test had the App show
    (a CI run: the duplicates' groups). The session replaces its state on
    each update: the first one follows it."""
    first = session._state

    def follow(event: Any) -> None:
        if event.state is not first:
            first.__dict__.update(vars(event.state))
    session._client.add_event_listener("state_update", follow)


def _patient_ping() -> None:
    """FiftyOne's session client gives a server 10 s to answer its ping,
    then connects again 10 s later (resending its state, see above): a
    server just started on a loaded machine can take longer. The client
    looks the function up at each connection: it pings up to the
    server's start time here, scaled by the load."""
    import fiftyone.core.session.client as client

    ping = client._ping
    if getattr(ping, "patient", False):
        return

    def patient(url: str) -> None:
        deadline = time.monotonic() + scaled(SERVER_START_TIMEOUT)
        while True:
            try:
                return ping(url)  # itself retried for 10 s
            except Exception:
                if time.monotonic() > deadline:
                    raise

    patient.patient = True  # type: ignore[attr-defined]
    client._ping = patient


@pytest.fixture(scope="session")
def app_server() -> Iterator[AppServer]:
    """This test process's :class:`AppServer`, stopped at the end."""
    require_browser()  # no server without a browser to look at it
    server = AppServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def app_session(app_server, app_dataset, browser) -> Iterator[Any]:
    """The process's App server (:class:`AppServer`) on the module's
    ``app_dataset``, with our plugin installed: its ``fo.Session``.

    The plugin is there only while the module runs: other test files put
    the repository under the plugins dir as the same plugin, and two of
    one name would clash. At the end the App's cookies and local and
    session storage are cleared (the next file's page starts as a new
    profile's would; the HTTP cache is kept: the App's scripts load once a
    process), and the browser leaves the App for a blank page before the
    module's dataset is deleted, the session letting the dataset go: no
    page asks the server about a deleted dataset.
    """
    from fiftyone_ai_search.app.install import install_plugin

    plugin_dir = install_plugin()
    try:
        session = app_server.session(app_dataset)
        try:
            yield session
        finally:
            _leave_the_app(browser, _app_url(session))
            app_server.show(None)
    finally:
        # other tests install the plugin their own way, under the same name
        shutil.rmtree(os.path.dirname(plugin_dir), ignore_errors=True)


def _leave_the_app(driver: "webdriver.Chrome", url: str) -> None:
    """Forgets what the App's page stored (it can only be cleared from a
    page of its origin: the App's, where the tests leave the browser),
    then goes to a blank page."""
    with contextlib.suppress(WebDriverException):
        if driver.current_url.startswith(url):
            driver.execute_script(
                "localStorage.clear(); sessionStorage.clear();")
        driver.delete_all_cookies()
    with contextlib.suppress(WebDriverException):
        driver.get("about:blank")


def _app_url(session: Any) -> str:
    return f"http://{session.server_address}:{session.server_port}"


@pytest.fixture
def app(request, browser, app_session, browser_artifacts) -> Iterator["App"]:
    """An :class:`App` on the module's server. On a failed test it saves a
    screenshot and prints the console errors, to see what went wrong."""
    failed_before = request.session.testsfailed
    driver = App(browser, _app_url(app_session), session=app_session,
                 artifacts=browser_artifacts)
    driver.console_errors()  # forget what earlier tests logged
    yield driver
    if request.session.testsfailed > failed_before:
        with contextlib.suppress(Exception):
            path = driver.screenshot(f"FAILED-{request.node.name}")
            print(f"\nscreenshot: {path}")
            print(f"url: {driver.driver.current_url}")
            for line in driver.console_errors():
                print(f"console: {line}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    """A failed browser test's one-line summary (``FAILED ... - ...``)
    also says what the page and the App server were doing: the open
    prompt's text, the notifications shown, each FiftyOne service's state
    and CPU. The CI's report keeps the summary lines; the screenshot and
    the captured output stay on the CI machine."""
    outcome = yield
    report = outcome.get_result()
    driver = getattr(item, "funcargs", {}).get("app")
    if report.when != "call" or not report.failed or driver is None:
        return
    lines = []
    with contextlib.suppress(Exception):
        lines.append(f"open prompt: {driver.open_prompt_text()!r}")
    with contextlib.suppress(Exception):
        lines.append(f"notifications: {driver.notifications()!r}")
    with contextlib.suppress(Exception):
        lines.extend(_server_states())
    with contextlib.suppress(Exception):
        # a session that lost the server sends its state again when it
        # reconnects (FiftyOne's client: every 10 s): the App's view resets
        client = driver.session._client
        lines.append(f"the test's session: connected {client._connected}, "
                     f"its thread alive {client._thread.is_alive()}")
    if "Could not connect session" in (report.capstdout or ""):
        lines.append("the test's session lost the App server meanwhile")
    with contextlib.suppress(AttributeError):
        report.longrepr.reprcrash.message += "".join(
            f"\n    {line}" for line in lines)


def _server_states(gap: float = 2.0) -> list[str]:
    """One line per FiftyOne service (the App server, its database) that
    this process started: its state and the CPU it used over ``gap``
    seconds (busy, or waiting on something)."""
    servers = [p for p in psutil.Process().children(recursive=True)
               if "--51-service" in " ".join(_cmdline(p))]
    before = {p.pid: _cpu(p) for p in servers}
    time.sleep(gap)
    lines = []
    for p in servers:
        used = _cpu(p)
        lines.append(f"FiftyOne service {_service_name(p)} (pid {p.pid}): "
                     f"{_status(p)}, {used - before[p.pid]:.2f} s of CPU in "
                     f"the last {gap:.0f} s, {used:.1f} s in all")
    return lines


def _cmdline(process: Any) -> list[str]:
    with contextlib.suppress(Exception):
        return process.cmdline()
    return []


def _service_name(process: Any) -> str:
    args = _cmdline(process)
    return next((b for a, b in zip(args, args[1:]) if a == "--51-service"),
                "?")


def _cpu(process: Any) -> float:
    with contextlib.suppress(Exception):
        times = process.cpu_times()
        return times.user + times.system
    return float("nan")


def _status(process: Any) -> str:
    with contextlib.suppress(Exception):
        return f"{process.status()}, {process.num_threads()} threads"
    return "gone"


#: the open operator prompt: the last visible dialog with an Execute button
_OPEN_PROMPT = """
    const ds = [...document.querySelectorAll(
        "[data-cy=operators-prompt-modal], [role=dialog]")].filter(visible);
    return ds.reverse().find(d => byText(d, "Execute", true).length) || null;
"""


def _js_arg(value: Any) -> Any:
    """A compiled regex goes to JavaScript as ``{re, flags}``."""
    if isinstance(value, re.Pattern):
        return {"re": value.pattern,
                "flags": "i" if value.flags & re.IGNORECASE else ""}
    return value


#: a label or text to find: exact text, or a compiled regex (``re.search``)
Text = Union[str, "re.Pattern[str]"]

#: where to look: an element, or a callable that finds it (again each time)
Root = Union["WebElement", Callable[[], "WebElement"]]


# -- the driver -----------------------------------------------------------------


def scaled(timeout: float) -> float:
    """``timeout`` stretched by how loaded the machine is (the load
    average per core, when above 1): on a shared CI machine the App does
    the same work more slowly, and a wait is there to tell slow from
    stuck."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        load = 1.0
    return timeout * min(max(load, 1.0), 8.0)


class App:
    """The FiftyOne App in a browser, driven by visible text and labels.

    Methods that take ``root`` search inside that element (a panel, the
    operator prompt, the sample modal); default the whole page.

    Args:
        driver: a selenium WebDriver
        url: the App's base URL, ``http://host:port``
        session (None): the ``fo.Session`` of that server, for the view
        artifacts (None): the screenshots directory
        timeout (TIMEOUT): default seconds for every wait
    """

    def __init__(self, driver: "webdriver.Chrome", url: str,
                 session: Any = None, artifacts: Optional[Path] = None,
                 timeout: float = TIMEOUT) -> None:
        self.driver = driver
        self.url = url.rstrip("/")
        self.session = session
        self.artifacts = Path(artifacts or DEFAULT_ARTIFACTS)
        self.timeout = timeout

    # -- waiting and scripts ------------------------------------------------------

    def wait(self, condition: Callable[[], T], what: str,
             timeout: Optional[float] = None, interval: float = 0.1) -> T:
        """Polls ``condition`` until it returns something truthy, and returns
        that. The React UI re-renders all the time, so an element found a
        moment ago may be gone: stale/missing elements count as "not yet",
        and so do elements not interactable yet (the grid shows
        placeholders until its tiles load, e.g. after a panel closed).

        The polls start ``interval`` apart and drift apart up to
        :data:`MAX_POLL_INTERVAL`: a poll costs the browser a scan of the
        page, and a long wait (a computation, the refresher's first pass)
        need not scan it ten times a second."""
        timeout = scaled(timeout or self.timeout)
        deadline = time.monotonic() + timeout
        last_error: Optional[Exception] = None
        while True:
            try:
                result = condition()
                if result:
                    return result
            except (StaleElementReferenceException, NoSuchElementException,
                    ElementClickInterceptedException,
                    ElementNotInteractableException, LookupError) as e:
                last_error = e
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Timed out after {timeout:.0f} s waiting "
                    f"for {what}" + (f" (last: {last_error!r})"
                                     if last_error else ""))
            time.sleep(interval)
            interval = min(interval * 1.25, max(interval, MAX_POLL_INTERVAL))

    def js(self, script: str, *args: Any) -> Any:
        """Runs ``script`` (a function body, with the shared helpers
        ``norm``/``visible``/``ownText``/``byText`` in scope)."""
        return self.driver.execute_script(
            _JS_LIB + script, *(_js_arg(a) for a in args))

    def _root(self, root: Optional[Root]) -> WebElement:
        # a callable root is looked up again on every use: a panel's content
        # element is replaced when the panel re-renders
        if callable(root):
            root = root()
        return root if root is not None else self.driver.find_element(
            By.TAG_NAME, "body")

    # -- page, text, diagnostics -----------------------------------------------------

    def open_dataset(self, name: str) -> None:
        """Loads ``/datasets/<name>`` and waits until the grid shows samples."""
        self.driver.get(f"{self.url}/datasets/{name}")
        self.wait(lambda: self.sample_count() is not None
                  and self.driver.find_elements(By.CSS_SELECTOR,
                                                "[data-cy=looker]"),
                  f"the grid of dataset {name!r}")
        self.dismiss_popups()

    def reload(self) -> None:
        """Reloads the page and waits for the grid again."""
        self.driver.refresh()
        self.wait(lambda: self.driver.find_elements(By.CSS_SELECTOR,
                                                    "[data-cy=looker]"),
                  "the grid after a reload")

    def press(self, key: str) -> None:
        """Presses a key (a name of selenium's ``Keys``, e.g. "ESCAPE") in
        whatever has the focus."""
        ActionChains(self.driver).send_keys(getattr(Keys, key, key)).perform()

    def dismiss_popups(self) -> None:
        """Closes FiftyOne's "Explore Enterprise" popover, which opens on the
        first visit over the grid's top right corner and eats clicks."""
        for button in self.find_text("Dismiss"):
            with contextlib.suppress(WebDriverException):
                button.click()

    def text(self, root: Optional[Root] = None) -> str:
        """The visible text of ``root``, whitespace collapsed."""
        return self.js("return norm(arguments[0].innerText);",
                       self._root(root))

    def wait_for_text(self, text: Text, root: Optional[Root] = None,
                      timeout: Optional[float] = None) -> str:
        """Waits until ``text`` (a substring, or a compiled regex) is visible
        in ``root``; returns the whole text."""
        def found() -> Optional[str]:
            current = self.text(root)
            ok = (text.search(current) if isinstance(text, re.Pattern)
                  else text in current)
            return current if ok else None
        return self.wait(found, f"text {text!r}", timeout)

    def find_text(self, text: Text, root: Optional[Root] = None,
                  exact: bool = True) -> list[WebElement]:
        """Visible elements under ``root`` whose own text, aria-label or
        title is ``text`` (or contains it, with ``exact=False``); the
        innermost first in document order."""
        return self.js("return byText(arguments[0], arguments[1], arguments[2]);",
                       self._root(root), text, exact)

    def console_errors(self) -> list[str]:
        """Browser console errors (SEVERE) since the last call. The App logs
        operator failures here and often shows nothing on screen."""
        entries = self.driver.get_log("browser")
        return [e["message"] for e in entries if e.get("level") == "SEVERE"
                and not _CONSOLE_NOISE.search(e.get("message", ""))]

    def screenshot(self, name: str) -> Path:
        """Saves a PNG of the window under the artifacts dir; returns it."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / (re.sub(r"[^\w.-]+", "_", name) + ".png")
        self.driver.save_screenshot(str(path))
        return path

    def notifications(self) -> list[str]:
        """Texts of the snackbars/alerts now shown (``ctx.ops.notify``),
        then those shown since :meth:`record_notifications` and not yet
        waited for."""
        return self.js(_NOTIFICATIONS_JS + """
            const els = document.querySelectorAll(NOTE_SELECTOR);
            const shown = [...els].filter(visible)
                .map(e => norm(e.innerText)).filter(Boolean);
            return [...new Set([...shown, ...(window.__aisNotes || [])])];
        """)

    def record_notifications(self) -> None:
        """Keeps every notification the page shows from now on (until it is
        loaded again): a snackbar hides itself after a few seconds, and
        one shown while a prompt closed could be gone before the first
        look (seen in CI: an operator's result notified, never seen)."""
        self.js(_NOTIFICATIONS_JS + """
            if (window.__aisNotes) return;
            window.__aisNotes = [];
            const last = new WeakMap();
            const scan = () => {
              for (const e of document.querySelectorAll(NOTE_SELECTOR)) {
                const text = norm(e.innerText);
                if (text && last.get(e) !== text) {
                  last.set(e, text);
                  window.__aisNotes.push(text);
                }
              }
            };
            new MutationObserver(scan).observe(document.body, {
              childList: true, subtree: true, characterData: true});
        """)

    def wait_for_notification(self, text: str,
                              timeout: Optional[float] = None) -> str:
        """Waits for a notification containing ``text`` (shown now, or kept
        since :meth:`record_notifications`); returns it. A kept one matches
        one wait only."""
        self.record_notifications()
        found = self.wait(lambda: next((n for n in self.notifications()
                                        if text in n), None),
                          f"a notification {text!r}", timeout)
        self.js("""
            const notes = window.__aisNotes || [];
            const at = notes.indexOf(arguments[0]);
            if (at >= 0) notes.splice(at, 1);
        """, found)
        return found

    # -- clicking and forms -------------------------------------------------------------

    def _clickable(self, text: Text, root: Optional[Root]) -> WebElement:
        elements = self.js(f"""
            const sel = {_CLICKABLE!r};
            const hits = [...new Set(byText(arguments[0], arguments[1], true)
                .map(e => e.closest(sel) || e).filter(visible))];
            // a section title may read like a button ("Search" above the
            // form, "Search" the button): real buttons first, then anything
            // clickable, then plain text; disabled twins after enabled ones
            const rank = e => (e.matches("button, [role=button]") ? 0
                               : e.matches(sel) ? 1 : 2)
              + (e.disabled || e.classList.contains("Mui-disabled")
                 || e.getAttribute("aria-disabled") === "true" ? 3 : 0);
            return hits.sort((a, b) => rank(a) - rank(b));
        """, self._root(root), text)
        if not elements:
            raise LookupError(f"nothing clickable labelled {text!r}")
        return elements[0]

    def click(self, element: WebElement) -> None:
        """Clicks ``element`` after scrolling it into view within its scroll
        box (the panel scrolls; "nearest" leaves the page itself alone).
        Falls back to a JS click if something overlays it (a fading
        tooltip, a sticky header)."""
        self.driver.execute_script(
            "arguments[0].scrollIntoView({block: 'nearest', inline: 'nearest'})",
            element)
        try:
            element.click()
        except ElementClickInterceptedException:
            self.driver.execute_script("arguments[0].click()", element)

    def click_button(self, text: Text, root: Optional[Root] = None,
                     timeout: Optional[float] = None) -> WebElement:
        """Clicks the button (or link, tab, option) whose text, aria-label
        or title is ``text``; waits for it to appear."""
        return self.wait(lambda: self._clicked(self._clickable(text, root)),
                         f"a button {text!r}", timeout)

    def _clicked(self, element: Optional[WebElement]) -> Optional[WebElement]:
        # found and clicked in one go, inside a wait: if React replaced the
        # element in between, the wait finds it again
        if element is not None:
            self.click(element)
        return element

    def button(self, text: Text, root: Optional[Root] = None,
               timeout: Optional[float] = None) -> WebElement:
        """The ``<button>`` labelled ``text``, enabled or not (to check
        whether it is disabled, without clicking it)."""
        def find() -> Optional[WebElement]:
            return self.js("""
                return byText(arguments[0], arguments[1], true)
                  .map(e => e.closest("button")).filter(Boolean)[0] || null;
            """, self._root(root), text)
        return self.wait(find, f"a button {text!r}", timeout)

    def is_disabled(self, element: WebElement) -> bool:
        return bool(self.js("""
            const e = arguments[0];
            return e.disabled || e.classList.contains("Mui-disabled")
                   || e.getAttribute("aria-disabled") === "true";
        """, element))

    def field(self, label: Text, root: Optional[Root] = None,
              timeout: Optional[float] = None) -> WebElement:
        """The form control that ``label`` labels: a ``<label for>``
        target, else the first control that follows the label inside the
        smallest container holding both. (FiftyOne's forms put the label
        text in a ``<p>`` beside the input, not in a ``<label>``.)"""
        def find() -> Optional[WebElement]:
            return self.js(f"""
                const controls = {_CONTROLS!r};
                for (const lab of byText(arguments[0], arguments[1], true)) {{
                  const forId = lab.closest("label[for]");
                  if (forId && document.getElementById(forId.htmlFor))
                    return document.getElementById(forId.htmlFor);
                  for (let box = lab.parentElement; box && box !== document.body;
                       box = box.parentElement) {{
                    const after = [...box.querySelectorAll(controls)].filter(c =>
                      !lab.contains(c) && (lab.compareDocumentPosition(c)
                                           & Node.DOCUMENT_POSITION_FOLLOWING));
                    if (after.length) {{
                      // a radio group: return the group, not its first radio
                      const c = after[0];
                      return c.closest("[role=radiogroup]") || c;
                    }}
                  }}
                }}
                return null;
            """, self._root(root), label)
        return self.wait(find, f"a field labelled {label!r}", timeout)

    def fill(self, label: Text, value: Any,
             root: Optional[Root] = None) -> WebElement:
        """Types ``value`` into the text/number field labelled ``label``,
        replacing what is there. Keystrokes, not ``element.clear()``: React
        only sees input events, so a cleared value would come back."""
        def type_in() -> bool:
            # all again if the panel re-rendered under us (stale element)
            element = self.field(label, root)
            self.click(element)
            element.send_keys(Keys.CONTROL, "a")
            element.send_keys(Keys.BACKSPACE)
            element.send_keys(str(value))
            return True

        self.wait(type_in, f"typing into {label!r}")
        # the form is controlled: wait until React took the value. Look
        # the field up again: a dynamic form re-renders after an edit.
        # A field that reads something else than what was typed (nor a
        # part of it, still arriving) was put back by a re-render: a panel
        # state write reloads the App's dataset page a moment after it
        # shows, so keys typed in that moment go to a field about to be
        # replaced. Type again, as a user whose entry vanished would.
        # What it read on the way is kept for the failure message
        seen: list[str] = []

        def took() -> bool:
            read = self.field(label, root).get_attribute("value")
            if not seen or seen[-1] != read:
                seen.append(read)
            if read == str(value):
                return True
            if not str(value).startswith(read or ""):
                type_in()
            return False

        try:
            self.wait(took, f"field {label!r} to read {value!r}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; it read, in turn: {seen}") from None
        return self.field(label, root)

    def choose(self, label: Text, option: str,
               root: Optional[Root] = None) -> None:
        """Picks ``option`` in the radio group, dropdown (MUI Select or
        Autocomplete) or native ``<select>`` labelled ``label``."""
        control = self.field(label, root)
        tag = control.tag_name.lower()
        role = control.get_attribute("role") or ""
        if role == "radiogroup" or control.get_attribute("type") == "radio":
            group = control if role == "radiogroup" else control.find_element(
                By.XPATH, "./ancestor::*[@role='radiogroup'][1]")
            self.click_button(option, root=group)
            # the group is looked up again: the form may re-render on a choice
            self.wait(lambda: option in self.js("""
                return [...arguments[0].querySelectorAll("input:checked")]
                       .map(i => norm(i.closest("label")?.innerText));
            """, self.field(label, root)),
                f"radio {option!r} of {label!r} to be checked")
        elif tag == "select":
            Select(control).select_by_visible_text(option)
        else:
            # MUI Select (div role=combobox) or Autocomplete (input): open
            # it, then pick from the listbox it renders in a body portal
            self.click(control)
            if tag == "input":
                control.send_keys(Keys.CONTROL, "a")
                control.send_keys(option)
            listbox = self.wait(lambda: next(iter(reversed(
                [e for e in self.driver.find_elements(
                    By.CSS_SELECTOR, "[role=listbox]") if e.is_displayed()])),
                None), f"the options of {label!r}")
            self.click_button(option, root=listbox)
            self.wait(lambda: not any(e.is_displayed() for e in
                                      self.driver.find_elements(
                                          By.CSS_SELECTOR, "[role=listbox]")),
                      f"the options of {label!r} to close")

    def close_menus(self) -> None:
        """Closes open MUI menus/popovers: a click on their backdrop (they
        ignore Escape when their search box has no focus)."""
        for backdrop in reversed(self.driver.find_elements(
                By.CSS_SELECTOR, ".MuiBackdrop-invisible")):
            with contextlib.suppress(WebDriverException):
                backdrop.click()
        self.wait(lambda: not self.driver.find_elements(
            By.CSS_SELECTOR, ".MuiBackdrop-invisible"), "menus to close")

    # -- panels --------------------------------------------------------------------------

    def open_panel(self, label: Text) -> WebElement:
        """Opens the panel ``label`` from the grid's "+" (new panel) menu,
        unless a tab of that name is already open; returns its root."""
        if not self._panel_tab(label):
            self.click(self.wait(lambda: self.driver.find_element(
                By.CSS_SELECTOR, "[data-cy=new-panel-btn]"),
                "the new-panel button"))
            menu_item = self.wait(lambda: self.js("""
                const items = [...document.querySelectorAll(
                    "[data-cy^=new-panel-option-]")].filter(visible);
                return items.find(i => byText(i, arguments[0], true).length);
            """, label), f"{label!r} in the new-panel menu")
            self.click(menu_item)
        return self.panel(label)

    def close_panel(self, label: Text) -> None:
        """Closes the open panel whose tab reads ``label`` with the X of its
        tab (a button titled "Close")."""
        def close() -> bool:
            tab = self._panel_tab(label)
            if tab is None:
                return True
            self.click(tab.find_element(By.CSS_SELECTOR,
                                        "[title=Close], [aria-label=Close]"))
            return False
        self.wait(close, f"the panel {label!r} to close", interval=0.5)

    def _panel_tab(self, label: Text) -> Optional[WebElement]:
        return self.js("""
            return [...document.querySelectorAll("[data-cy^=panel-tab-]")]
              .find(t => byText(t, arguments[0], true).length) || null;
        """, label)

    def panel(self, label: Text, timeout: Optional[float] = None) -> WebElement:
        """The content root of the open panel whose tab reads ``label``.
        Tab and content share a suffix (``panel-tab-ai_search_panel`` /
        ``panel-content-ai_search_panel``), case aside (``-samples`` /
        ``-Samples``). Look it up again after big re-renders."""
        def find() -> Optional[WebElement]:
            tab = self._panel_tab(label)
            if tab is None:
                return None
            key = tab.get_attribute("data-cy")[len("panel-tab-"):].lower()
            return self.js("""
                return [...document.querySelectorAll("[data-cy^=panel-content-]")]
                  .find(c => c.dataset.cy.slice(14).toLowerCase() === arguments[0]
                             && visible(c)) || null;
            """, key)
        return self.wait(find, f"the panel {label!r}", timeout)

    # -- our AI Search panel ---------------------------------------------------------------

    def open_search_prompt(self, panel: Root, mode: Optional[str] = None
                           ) -> WebElement:
        """Clicks the Search button of our panel ``panel``: it opens the
        search form (the grid button's) in an operator prompt; picks
        ``mode`` there. Returns the prompt."""
        self.click_button("Search", root=panel)
        prompt = self.prompt()
        if mode is not None:
            self.choose("Search by", mode, root=self.prompt)
        return prompt

    def search_from_panel(self, panel: Root, mode: str, limit: int,
                          **fields: Any) -> None:
        """Searches from our panel as a curator does: Search, then the
        prompt's mode, fields (by label) and limit, then Execute."""
        self.open_search_prompt(panel, mode)
        for label, value in fields.items():
            self.fill(label, value, root=self.prompt)
        self.fill("Limit", limit, root=self.prompt)
        self.execute_prompt()

    def nothing_selected_is_said(self, panel: Root) -> None:
        """Our panel's Search in mode "similar" with nothing selected: the
        prompt says so and cannot run; back to "prompt", then Cancel."""
        self.open_search_prompt(panel, "similar")
        self.wait_for_text("Nothing selected", root=self.prompt)
        self.wait(self.execute_disabled, "Execute to be disabled")
        self.choose("Search by", "prompt", root=self.prompt)
        self.wait_for_text("Prompt", root=self.prompt)
        self.cancel_prompt()

    def save_from_panel(self, panel: Root, name: str) -> None:
        """"Save what is shown as a collection" of our panel: its prompt,
        the name typed, Execute."""
        self.click_button("Save what is shown as a collection", root=panel)
        self.fill("Name", name, root=self.prompt)
        self.execute_prompt()

    # -- grid actions and the operator prompt -----------------------------------------------

    def grid_action(self, label: Text) -> WebElement:
        """The button above the grid labelled ``label``. Icon buttons show
        their label only as a tooltip on hover (``data-cy=tooltip-<label>``),
        so each is hovered in turn when no text matches. When the grid is
        narrow (a panel beside it) the row is clipped and the rest sits
        behind a "More items" expander (ExpandMore icon) that pops up copies
        of the hidden buttons: only buttons on top at their centre count."""
        bar = self.wait(lambda: self.driver.find_element(
            By.CSS_SELECTOR, "[data-cy=fo-grid-actions]"), "the grid actions")
        for attempt in range(2):
            items = self._action_items(bar, label)
            if len(items) == 1 and self.find_text(label, items[0]):
                return items[0]
            # plugin buttons come after the built-in ones: hover from the end
            item = self._hover_for_tooltip(reversed(items), label)
            if item is not None:
                return item
            expander = self.js("""
                const svg = [...arguments[0].querySelectorAll(
                    "svg[data-testid=ExpandMoreIcon]")].find(visible);
                return svg ? svg.parentElement : null;
            """, bar)
            if expander is None or attempt:
                break
            self.click(expander)
        raise LookupError(f"no grid action labelled {label!r}")

    def _action_items(self, container: WebElement,
                      label: Text) -> list[WebElement]:
        """The action buttons (FiftyOne's ``data-cy=action-*`` and operator
        placements, ``data-item-id=<operator uri>``) in ``container`` that a
        click can reach; those with ``label`` as text, if any."""
        return self.js("""
            const sel = "[data-item-id], [data-cy^=action-]";
            const all = [...arguments[0].querySelectorAll(sel)].filter(e =>
                visible(e) && hittable(e) && !e.parentElement.closest(sel));
            const text = all.filter(e => byText(e, arguments[1], true).length);
            return text.length ? text : all;
        """, container, label)

    def _tooltips(self) -> set[str]:
        return set(self.js("""
            return [...document.querySelectorAll("[data-cy^=tooltip-], [role=tooltip]")]
                   .filter(visible).map(t => norm(t.innerText));"""))

    def _is_label(self, text: str, label: Text) -> bool:
        return bool(label.search(text)) if isinstance(label, re.Pattern) \
            else text == label

    def _hover_for_tooltip(self, items: Iterable[WebElement],
                           label: Text) -> Optional[WebElement]:
        """The first of ``items`` whose hover tooltip reads ``label``. An
        item is passed over as soon as another new tooltip shows (or none
        within ~1.5 s); a lingering old tooltip does not count."""
        for item in items:
            before = self._tooltips()
            with contextlib.suppress(WebDriverException):
                ActionChains(self.driver).move_to_element(item).perform()
            with contextlib.suppress(TimeoutError):
                # a tooltip that was there before the hover is stale, unless
                # it is the one we look for (the hover may re-show it)
                shown = self.wait(lambda: {t for t in self._tooltips() if t not in
                                           before or self._is_label(t, label)},
                                  "a tooltip", timeout=1.5)
                if any(self._is_label(t, label) for t in shown):
                    return item
        return None

    def click_grid_action(self, label: Text) -> WebElement:
        """Clicks the grid action ``label``; if it opens an operator prompt,
        waits for it and returns it, else returns None."""
        item = self.wait(lambda: self.grid_action(label),
                         f"the grid action {label!r}")
        self.click(item)
        with contextlib.suppress(TimeoutError):
            return self.prompt(timeout=min(self.timeout, 15))
        return None

    def prompt(self, timeout: Optional[float] = None) -> WebElement:
        """The open operator prompt (a dialog with an Execute button)."""
        return self.wait(lambda: self.js(_OPEN_PROMPT), "an operator prompt",
                         timeout)

    def open_prompt_text(self) -> Optional[str]:
        """The text of the open operator prompt, None if none is open (no
        wait: for a failure's report)."""
        prompt = self.js(_OPEN_PROMPT)
        return None if prompt is None else self.text(prompt)

    def execute_button(self) -> WebElement:
        return self._clickable("Execute", self.prompt())

    def execute_disabled(self) -> bool:
        """Whether the prompt's Execute button is disabled now (a required
        field is empty, or the form is being resolved again after an edit:
        wait for it, see :meth:`wait_executable`)."""
        return self.is_disabled(self.execute_button())

    def wait_executable(self, timeout: Optional[float] = None) -> None:
        """Waits until the prompt's Execute button is enabled."""
        self.wait(lambda: not self.execute_disabled(),
                  "Execute to be enabled", timeout)

    def execute_prompt(self, timeout: Optional[float] = None) -> None:
        """Presses Execute (once enabled; a dynamic form re-resolves after an
        edit) and waits for the prompt to close. Prompts that show results
        stay open: their Close/Done button is pressed after."""
        prompt = self.prompt()
        self.wait_executable()
        self.record_notifications()  # the result's may come and go at once
        self.click(self.execute_button())

        def closed() -> bool:
            try:
                if not prompt.is_displayed():
                    return True
            except StaleElementReferenceException:
                return True
            if not self.find_text("Execute", prompt):
                for text in ("Done", "Close"):
                    with contextlib.suppress(LookupError):
                        self.click(self._clickable(text, prompt))
            return False
        self.wait(closed, "the operator prompt to close", timeout)

    def cancel_prompt(self) -> None:
        prompt = self.prompt()
        self.click_button("Cancel", root=prompt)
        self.wait(lambda: not self._displayed(prompt), "the prompt to close")

    def run_grid_action(self, label: Text, fill: Optional[dict] = None,
                        choose: Optional[dict] = None) -> None:
        """Clicks grid action ``label``, sets the prompt's fields
        (``choose`` first: a choice can change which fields exist), and
        executes it."""
        prompt = self.click_grid_action(label)
        if prompt is None:
            raise AssertionError(f"grid action {label!r} opened no prompt")
        for field_label, option in (choose or {}).items():
            self.choose(field_label, option, root=self.prompt())
        for field_label, value in (fill or {}).items():
            self.fill(field_label, value, root=self.prompt())
        self.execute_prompt()

    @staticmethod
    def _displayed(element: WebElement) -> bool:
        try:
            return element.is_displayed()
        except StaleElementReferenceException:
            return False

    # -- the samples grid -------------------------------------------------------------------

    def sample_count(self) -> Optional[int]:
        """The count the grid header shows ("60 samples"; with a selection or
        filter "12 of 60 samples": the first number), None if not shown."""
        text = self.js("""
            const e = document.querySelector("[data-cy=entry-counts]");
            return e && visible(e) ? norm(e.innerText) : null;
        """)
        match = re.search(r"[\d,]+", text or "")
        return int(match.group().replace(",", "")) if match else None

    def wait_for_count(self, count: int, timeout: Optional[float] = None) -> None:
        last: list[Any] = [None]

        def check() -> bool:
            last[0] = self.sample_count()
            return last[0] == count
        try:
            self.wait(check, f"the grid to show {count} samples", timeout)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; it last showed {last[0]}") from None

    _TILES_JS = """
        const ts = [...document.querySelectorAll(
            "[data-cy=panel-content-Samples] [data-cy=looker], [data-cy=fo-grid] [data-cy=looker]")];
        const key = e => { const r = e.getBoundingClientRect(); return [r.top, r.left]; };
        const tiles = [...new Set(ts)].filter(visible).sort((a, b) => {
          const [ta, la] = key(a), [tb, lb] = key(b);
          return Math.abs(ta - tb) > 2 ? ta - tb : la - lb; });
    """

    def tiles(self) -> list[WebElement]:
        """The grid's sample tiles now rendered (the grid virtualises: only
        those near the viewport), in reading order."""
        return self.js(self._TILES_JS + "return tiles;")

    def tile_labels(self) -> list[str]:
        """The label tags shown on each rendered tile, in reading order
        (e.g. "red circle"): what a user sees of the grid's order. One
        script: the grid replaces tiles as their images load, so a tile
        found in one call may be gone in the next."""
        return self.js(self._TILES_JS + """
            return tiles.map(t => [...t.querySelectorAll("[data-cy^=tag-]")]
                                   .map(e => norm(e.innerText)).join(", "));
        """)

    def tiles_drawn(self) -> bool:
        """Whether every tile in the viewport has drawn its image (FiftyOne
        marks a tile's canvas ``canvas-loaded`` once it drew the image on
        it; till then it shows a placeholder) and is on top (nothing
        covers it)."""
        return bool(self.js(self._TILES_JS + """
            const inView = tiles.filter(t => {
              const r = t.getBoundingClientRect();
              return r.top >= 0 && r.bottom <= innerHeight; });
            return inView.length > 0 && inView.every(t => hittable(t) &&
              t.querySelector("canvas[canvas-loaded=true]"));
        """))

    def wait_for_tiles(self, count: int,
                       timeout: Optional[float] = None) -> list[str]:
        """Waits until exactly ``count`` tiles are rendered (the grid first
        shows placeholders, then the tiles); returns their labels."""
        def check() -> Optional[list[str]]:
            labels = self.tile_labels()
            # a tile draws its label tags once its sample has loaded
            return labels if len(labels) == count and all(labels) else None
        return self.wait(check, f"{count} tiles in the grid", timeout)

    def tile(self, index: int) -> WebElement:
        return self.wait(lambda: self.tiles()[index] if len(self.tiles()) > index
                         else None, f"grid tile {index}")

    def select_tile(self, index: int, selected: bool = True) -> None:
        """Ticks (or, with ``selected=False``, unticks) the checkbox of tile
        ``index``; it only shows while the pointer is over the tile. All
        again if the grid re-renders the tile meanwhile."""
        def checkbox(tile: WebElement) -> WebElement:
            return tile.find_element(By.CSS_SELECTOR, "input[type=checkbox]")

        last_click = [float("-inf")]

        def toggled() -> bool:
            tile = self.tile(index)
            if checkbox(tile).is_selected() == selected:
                return True
            # a click can be lost while the grid settles: click again, but
            # only after the last one had time to show (no double toggle)
            if time.monotonic() - last_click[0] > 3.0:
                ActionChains(self.driver).move_to_element(tile).perform()
                self.click(tile.find_element(
                    By.CSS_SELECTOR, "[data-cy^=looker-checkbox]"))
                last_click[0] = time.monotonic()
            return False

        self.wait(toggled,
                  f"tile {index} to be {'' if selected else 'un'}selected",
                  interval=0.25)

    def open_sample(self, index: int) -> WebElement:
        """Opens tile ``index`` in the sample modal; returns the modal.

        A click on a tile's canvas expands it. Under the pointer, a tile
        shows its checkbox's box in its top left corner, which covers the
        middle of a small tile (a panel beside the grid): the click goes to
        the right of the middle, on the canvas. A click lost while the grid
        still moves its tiles is made again, never sooner than it could
        show."""
        last_click = [float("-inf")]

        def opened() -> Optional[WebElement]:
            modal = next((e for e in self.driver.find_elements(
                By.CSS_SELECTOR, "[data-cy=modal]") if e.is_displayed()), None)
            if modal is not None:
                return modal
            if time.monotonic() - last_click[0] > 3.0:
                tile = self.tile(index)
                rect = tile.rect
                dx, dy = int(0.3 * rect["width"]), int(0.1 * rect["height"])
                ActionChains(self.driver).move_to_element_with_offset(
                    tile, dx, dy).perform()
                on_canvas = self.js("""
                    const r = arguments[0].getBoundingClientRect();
                    const e = document.elementFromPoint(
                        r.left + r.width / 2 + arguments[1],
                        r.top + r.height / 2 + arguments[2]);
                    return !!e && e.tagName === "CANVAS"
                           && arguments[0].contains(e);
                """, tile, dx, dy)
                if not on_canvas:
                    raise LookupError(f"no canvas of tile {index} to click")
                ActionChains(self.driver).click().perform()
                last_click[0] = time.monotonic()
            return None

        return self.wait(opened, f"tile {index} to open in the sample modal",
                         interval=0.25)

    def sample_modal(self, timeout: Optional[float] = None) -> WebElement:
        return self.wait(lambda: next((e for e in self.driver.find_elements(
            By.CSS_SELECTOR, "[data-cy=modal]") if e.is_displayed()), None),
            "the sample modal", timeout)

    def click_modal_action(self, label: Text) -> WebElement:
        """Clicks an action in the sample modal by its text, aria-label,
        title or hover tooltip."""
        modal = self.sample_modal()
        with contextlib.suppress(LookupError):
            element = self._clickable(label, modal)
            self.click(element)
            return element
        item = self._hover_for_tooltip(
            reversed(self._action_items(modal, label)), label)
        if item is not None:
            self.click(item)
            return item
        raise LookupError(f"no modal action labelled {label!r}")

    def click_placement(self, operator_uri: str) -> WebElement:
        """Clicks the button an operator placed in the App (grid actions,
        sample modal): FiftyOne marks it ``data-item-id=<operator uri>``.
        Exact, where a hover for the tooltip of an icon is not. In a grid
        row clipped by a panel beside it, it is reached through the "More
        items" expander (see :meth:`click_grid_item`)."""
        return self.click_grid_item(
            f'[data-item-id="{operator_uri}"]', f"the button of {operator_uri}")

    def _grid_expander(self) -> Optional[WebElement]:
        """The grid actions' "More items" expander (ExpandMore icon), shown
        when the row is too narrow for all its buttons."""
        return self.js("""
            const bar = document.querySelector("[data-cy=fo-grid-actions]");
            const svg = bar && [...bar.querySelectorAll(
                "svg[data-testid=ExpandMoreIcon]")].find(visible);
            return svg ? svg.parentElement : null;
        """)

    def click_grid_item(self, selector: str, what: str) -> WebElement:
        """Clicks the first element matching the CSS ``selector`` that a
        click can reach (visible, on top at its centre). When the grid
        actions row is clipped (a panel beside the grid), the hidden
        buttons are copies in the popup of its "More items" expander: it is
        opened (again, if a click was lost) until one can be reached. That
        popup stays open after the click: see :meth:`click_away`."""
        last_expand = [float("-inf")]

        def find() -> Optional[WebElement]:
            item = self.js("""
                return [...document.querySelectorAll(arguments[0])]
                  .filter(e => visible(e) && hittable(e))[0] || null;
            """, selector)
            # a click on the expander toggles its popup: only after the
            # last one had time to show
            if item is None and time.monotonic() - last_expand[0] > 3.0:
                expander = self._grid_expander()
                if expander is not None:
                    self.click(expander)
                    last_expand[0] = time.monotonic()
            return item

        return self.wait(lambda: self._clicked(find()), what)

    def click_away(self, element: WebElement) -> None:
        """Clicks the title of ``element`` (an operator prompt: its topmost
        text), as a user does to close a popup that stays open (the grid
        actions' "More items"). The title is found when clicked, not from a
        size read before: the prompt grows and shrinks while its form
        resolves, and a click just outside it would close the prompt."""
        def title() -> Optional[WebElement]:
            return self.js("""
                const texts = [...arguments[0].querySelectorAll("*")]
                  .filter(e => ownText(e) && visible(e));
                texts.sort((a, b) => a.getBoundingClientRect().top
                                     - b.getBoundingClientRect().top);
                return texts[0] || null;
            """, element)

        def clicked() -> bool:
            target = title()
            if target is not None:
                ActionChains(self.driver).move_to_element(target).click().perform()
            return target is not None

        self.wait(clicked, "the title of the prompt")

    # -- FiftyOne's own similarity search ---------------------------------------------

    def sort_by_similarity(self, prompt: Optional[str] = None) -> None:
        """Runs FiftyOne's built-in similarity search from the grid's "Sort
        by text similarity" action (``data-cy=action-sort-by-similarity``;
        with samples selected it reads "Sort by image similarity"): types
        ``prompt`` into its "Type anything!" box and presses Enter, or,
        with ``prompt=None``, presses "Show similar samples" (similar to
        the selected samples). The App runs ``@voxel51/panels/
        similarity_search`` on the current view (25 matches, its first
        similarity index) and opens the "Similarity Search" panel, whose
        run card applies the results (:meth:`show_similarity_run`)."""
        self.click_grid_item("[data-cy=action-sort-by-similarity]",
                             "the grid's similarity search action")
        if prompt is None:
            self.click_button("Show similar samples")
            # the App reads the selection, then clears it
            if self.session is not None:
                self.wait(lambda: not self.session.selected,
                          "the App to take the selection")
        else:
            box = self.wait(lambda: next((e for e in self.driver.find_elements(
                By.CSS_SELECTOR, "input[placeholder='Type anything!']")
                if e.is_displayed()), None), "the similarity search box")
            self.click(box)
            box.send_keys(prompt)
            self.wait(lambda: box.get_attribute("value") == prompt,
                      f"the similarity search box to read {prompt!r}")
            box.send_keys(Keys.ENTER)
        # the "More items" popup, if the action was in it, stays open
        # over the grid: Escape closes it (and the similarity popover)
        with contextlib.suppress(WebDriverException):
            self.press("ESCAPE")

    def similarity_run(self, text: Text,
                       timeout: Optional[float] = None) -> tuple[str, WebElement]:
        """Waits for a search of the "Similarity Search" panel whose card
        shows ``text`` (its query, e.g. the prompt) to read "Completed";
        returns the card's text and its "Show results" button."""
        def find() -> Optional[tuple[str, WebElement]]:
            found = self.js("""
                // the card: the smallest box around the text with one
                // "Show results" button
                for (const e of byText(arguments[0], arguments[1], true)) {
                  for (let box = e; box && box !== arguments[0];
                       box = box.parentElement) {
                    const shows = [...box.querySelectorAll(
                        "button[aria-label='Show results']")];
                    if (shows.length > 1) break;
                    if (shows.length === 1)
                      return [norm(box.innerText), shows[0]];
                  }
                }
                return null;
            """, self.panel("Similarity Search"), text)
            return tuple(found) if found and "Completed" in found[0] else None
        return self.wait(find, f"the similarity search {text!r} to complete",
                         timeout)

    def show_similarity_run(self, text: Text) -> str:
        """Clicks "Show results" of the completed similarity search
        ``text`` (:meth:`similarity_run`); returns the card's text."""
        card, button = self.similarity_run(text)
        self.click(button)
        return card

    def open_operator(self, label: Text, search: Optional[str] = None
                      ) -> WebElement:
        """Opens an operator from FiftyOne's operator browser (the grid's
        "Browse operations" action, ``data-cy=action-browse-operations``):
        types ``search`` (default ``label``) into its search box, clicks the
        operator labelled ``label``; returns the operator's prompt."""
        self.click_grid_item("[data-cy=action-browse-operations]",
                             "the grid's browse operations action")
        box = self.wait(lambda: next((e for e in self.driver.find_elements(
            By.CSS_SELECTOR, "input[data-cy=operators-browser-search]")
            if e.is_displayed()), None), "the operator browser")
        box.send_keys(search if search is not None else str(label))
        self.click_button(label, root=lambda: self.driver.find_element(
            By.CSS_SELECTOR, "[data-cy=operators-browser]"))
        prompt = self.prompt()
        self.click_away(prompt)  # the grid's "More items" popup, if open
        return prompt

    def click_icon(self, icon: str, root: Optional[Root] = None) -> WebElement:
        """Clicks the button drawn with Material icon ``icon`` (the icon's
        ligature text, e.g. ``"image_search"``) under ``root``. Operator
        placements in the sample modal carry no ``data-item-id``; their
        icon is what tells them apart."""
        def find() -> Optional[WebElement]:
            return self.js("""
                const icon = [...arguments[0].querySelectorAll(".material-icons")]
                  .find(e => norm(e.textContent) === arguments[1] && visible(e));
                return icon ? icon.parentElement : null;
            """, self._root(root), icon)
        return self.wait(lambda: self._clicked(find()),
                         f"a button with icon {icon!r}")

    def close_sample(self) -> None:
        """Closes the sample modal with Escape, as a user would. The modal
        only hears Escape with the pointer over the sample (after another
        popup, e.g. the operator browser, took focus, a bare Escape does
        nothing), so the pointer goes there first."""
        modal = self.sample_modal()
        target = next(iter(modal.find_elements(
            By.CSS_SELECTOR, "[data-cy=modal-looker-container]")), modal)
        ActionChains(self.driver).move_to_element(target).send_keys(
            Keys.ESCAPE).perform()
        self.wait(lambda: not self._displayed(modal), "the sample modal to close")

    # -- saved views ------------------------------------------------------------------------

    def _saved_views_list(self) -> WebElement:
        """Opens the saved-views dropdown; returns its list."""
        self.click(self.wait(lambda: self.driver.find_element(
            By.CSS_SELECTOR, "[data-cy=saved-views-selection] [role=combobox]"),
            "the saved-views dropdown"))
        return self.wait(lambda: self.driver.find_element(
            By.CSS_SELECTOR, "[data-cy=saved-views-selection-view]"),
            "the saved-views list")

    def saved_view_names(self) -> list[str]:
        """The view names the saved-views dropdown lists now (it is opened
        and closed again; the page is not reloaded)."""
        listbox = self._saved_views_list()
        # an unsaved current view is listed too, as "Unsaved view": not a
        # saved view
        names = self.js("""
            return [...arguments[0].querySelectorAll("[role=option][data-value]")]
                   .map(o => norm(o.innerText))
                   .filter(n => n && n !== "Unsaved view");
        """, listbox)
        self.close_menus()
        return names

    def clear_view(self) -> None:
        """Back to the whole dataset, as a user does: the X of the saved
        views box (for a saved view) or of the view bar (for stages)."""
        for cy in ("saved-views-btn-selection-clear", "btn-clear-view-bar"):
            for button in self.driver.find_elements(By.CSS_SELECTOR,
                                                    f"[data-cy={cy}]"):
                if self._displayed(button):
                    self.click(button)
        if self.session is not None:
            self.wait(lambda: self.session.view is None,
                      "the App to show the whole dataset")

    def current_saved_view(self) -> Optional[str]:
        """The saved view's name the dropdown shows, None for an unsaved one
        (its text then reads "Unsaved view")."""
        text = self.js("""
            const e = document.querySelector("[data-cy=saved-views-selection]");
            return e ? norm(e.innerText) : null;""")
        return None if not text or text == "Unsaved view" else text

    def open_saved_view(self, name: str) -> None:
        """Picks ``name`` in FiftyOne's saved-views list, as a user does."""
        listbox = self._saved_views_list()
        self.click_button(name, root=listbox)
        self.wait(lambda: self.current_saved_view() == name,
                  f"the saved view {name!r} to open")

    def sidebar_filter(self, field: str, value: str) -> None:
        """Filters the sidebar's string field ``field`` to ``value``: opens
        the field, types the value into its "+ filter by <field>" box and
        takes it with Enter once FiftyOne lists it."""
        def box() -> Optional[WebElement]:
            found = [e for e in self.driver.find_elements(
                By.CSS_SELECTOR, "input") if e.is_displayed() and
                f"filter by {field}" in (e.get_attribute("placeholder") or "")]
            if not found:
                self.click(self.driver.find_element(
                    By.CSS_SELECTOR,
                    f"[data-cy=sidebar-field-arrow-enabled-{field}]"))
                return None
            return found[0]

        element = self.wait(box, f"the filter box of {field!r}", interval=0.5)
        self.click(element)
        element.send_keys(value)
        # the suggestion list shows the value once the server answered
        self.wait(lambda: [e for e in self.find_text(value)
                           if e.get_attribute("data-cy") != f"tag-{field}"
                           and not e.find_elements(By.XPATH,
                                                   "ancestor::*[@data-cy='fo-grid']")],
                  f"{value!r} among the values of {field!r}")
        element.send_keys(Keys.ENTER)

    # -- charts and sliders -----------------------------------------------------------------

    def plots(self, root: Optional[Root] = None) -> list[WebElement]:
        """The Plotly charts under ``root``."""
        return [p for p in self._root(root).find_elements(
            By.CSS_SELECTOR, ".js-plotly-plot") if p.is_displayed()]

    def plot_bars(self, root: Optional[Root] = None) -> int:
        """How many bars the Plotly charts under ``root`` draw (bars of
        height zero not counted). An empty chart (its data never sent)
        still draws its axes: this tells it from a drawn histogram."""
        return self.js("""
            return [...arguments[0].querySelectorAll(
                ".js-plotly-plot .barlayer .point path")].filter(p => {
                  const r = p.getBoundingClientRect();
                  return r.width > 0 && r.height > 0;
                }).length;
        """, self._root(root))

    def wait_for_bars(self, root: Optional[Root] = None,
                      timeout: Optional[float] = None) -> int:
        """Waits until the charts under ``root`` draw bars; returns how
        many."""
        return self.wait(lambda: self.plot_bars(root),
                         "bars in the histogram", timeout)

    def box_select(self, plot: WebElement, x0: float, x1: float,
                   y0: float = 0.05, y1: float = 0.95) -> None:
        """Drags a selection box over a Plotly chart from ``x0`` to ``x1``
        (fractions of the plot area's width; ``y`` of its height), as a
        mouse would: press, move in steps, release on the drag layer
        (``.nsewdrag``, the rectangle of the plot area)."""
        layer = plot.find_element(By.CSS_SELECTOR, ".nsewdrag")
        self.driver.execute_script(
            "arguments[0].scrollIntoView({block: 'nearest'})", plot)
        rect = layer.rect
        # offsets are from the element's centre in selenium 4
        def at(fx: float, fy: float) -> tuple[int, int]:
            return (int((fx - 0.5) * rect["width"]),
                    int((fy - 0.5) * rect["height"]))
        sx, sy = at(x0, y0)
        ex, ey = at(x1, y1)
        chain = ActionChains(self.driver, duration=50)
        chain.move_to_element_with_offset(layer, sx, sy).click_and_hold()
        steps = 8  # plotly only starts a selection after some movement
        for i in range(1, steps + 1):
            chain.move_to_element_with_offset(
                layer, sx + (ex - sx) * i // steps, sy + (ey - sy) * i // steps)
        chain.release().perform()

    def sliders(self, root: Optional[Root] = None) -> list[WebElement]:
        """The MUI sliders (``.MuiSlider-root``) under ``root``."""
        return [s for s in self._root(root).find_elements(
            By.CSS_SELECTOR, ".MuiSlider-root") if s.is_displayed()]

    def slider_range(self, slider: WebElement) -> tuple[float, float]:
        """The slider's ``(min, max)``."""
        knob = slider.find_element(By.CSS_SELECTOR, "input[type=range]")
        return (float(knob.get_attribute("aria-valuemin") or knob.get_attribute("min")),
                float(knob.get_attribute("aria-valuemax") or knob.get_attribute("max")))

    def slider_values(self, slider: WebElement) -> list[float]:
        """The thumbs' values (one for a slider, two for a range)."""
        return [float(v) for v in self.js("""
            return [...arguments[0].querySelectorAll("input[type=range]")]
                   .map(i => i.getAttribute("aria-valuenow") || i.value);
        """, slider)]

    def drag_slider(self, slider: WebElement, thumb: int,
                    value: float) -> Optional[float]:
        """Drags thumb ``thumb`` (0: min, 1: max of a range) of an MUI
        slider to where ``value`` sits on its rail; returns the value it
        took (snapped to the slider's step)."""
        thumbs = slider.find_elements(By.CSS_SELECTOR, ".MuiSlider-thumb")
        handle = thumbs[thumb]
        lo, hi = self.slider_range(slider)
        rail = slider.rect
        target_x = rail["x"] + (value - lo) / (hi - lo) * rail["width"]
        here = handle.rect
        dx = int(round(target_x - (here["x"] + here["width"] / 2)))
        (ActionChains(self.driver, duration=50).move_to_element(handle)
         .click_and_hold().move_by_offset(dx // 2, 0).move_by_offset(dx - dx // 2, 0)
         .release().perform())
        try:
            return self.slider_values(slider)[thumb]
        except StaleElementReferenceException:
            return None  # re-rendered on commit: read the new state instead

    def set_range_inputs(self, label_min: str, value_min: Any, label_max: str,
                         value_max: Any, root: Optional[Root] = None) -> None:
        """For a slider variant with min/max number inputs: types both,
        then Enter so the slider commits."""
        for label, value in ((label_min, value_min), (label_max, value_max)):
            self.fill(label, value, root=root)
            # the field may have been re-rendered since: find it again
            self.wait(lambda: self.field(label, root).send_keys(Keys.ENTER)
                      or True, f"Enter in {label!r}")

    # -- the view as the App has it -------------------------------------------------------

    def view_ids(self) -> list[str]:
        """The App's current view as ordered sample ids, from the session
        (it follows the browser's state; ``session.view`` is None for the
        whole dataset)."""
        if self.session is None:
            raise RuntimeError("App has no session: view_ids() needs one")
        view = self.session.view
        return (view if view is not None else self.session.dataset).values("id")

    def wait_for_view(self, predicate: Callable[[list[str]], bool], what: str,
                      timeout: Optional[float] = None) -> list[str]:
        """Waits until the App's view ids satisfy ``predicate``; returns them.
        (The session hears of a new view ~0.7-2 s after the click.)"""
        last: list[str] = []

        def check() -> Optional[list[str]]:
            last[:] = self.view_ids()
            return last if predicate(last) else None
        try:
            return self.wait(check, what, timeout, interval=0.2)
        except TimeoutError as e:
            # what it showed instead (ids shortened to their last 6 digits)
            raise TimeoutError(f"{e}; the view held {len(last)} samples: "
                               f"{[i[-6:] for i in last]}") from None

    def view_slug(self) -> Optional[str]:
        """The saved view's slug in the URL (``?view=<slug>``), if any."""
        match = re.search(r"[?&]view=([^&#]+)", self.driver.current_url)
        return match.group(1) if match else None

    def selected_ids(self) -> list[str]:
        return list(self.session.selected or [])


__all__ = [
    "App",
    "AppServer",
    "TIMEOUT",
    "app",
    "app_server",
    "app_session",
    "browser",
    "browser_artifacts",
    "free_port",
    "require_browser",
    "unavailable",
]
