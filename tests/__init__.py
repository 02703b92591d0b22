"""The test suite, a package: its shared helpers are imported by name from
it (``from tests.helpers import shapes_dataset``, ``tests.peer``,
``tests.app_browser``), never found through ``sys.path``.

``conftest.py`` sets up the session (a private ``mongod``, offline FiftyOne)
and holds the fixtures shared by several modules.
"""
