"""Results that last: every matrix run (and `smoke --record`) in a results database, the
queries over it (`amilab results`), `amilab bisect` and the dashboard.

`db` opens the store (SQLite in AMILAB_HOME by default, PostgreSQL for a team) and applies
its versioned schema; `record` writes a run's cells; `queries` reads them back (runs, a grid,
a cell's history, regressions, flaky cells, boot-time trends, first broken); `bisect` finds a
kernel series' boundary in O(log n) boots; `pages`, `svg` and `dashboard` serve it all as
HTML and JSON.
"""
