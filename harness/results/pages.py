"""The dashboard's pages: self-contained HTML (inline CSS and SVG, no script, nothing
fetched), each with the known issues, and `data-*` attributes a browser test reads
(`data-run`, `data-cell`/`data-status`, `data-point`)."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

from harness.results.known_view import Known

CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}
nav a{margin-right:1em} table{border-collapse:collapse;margin:.8em 0}
th,td{border:1px solid #bbb;padding:.3em .5em;text-align:left;vertical-align:top;font-size:.9em}
td.PASS{background:#b7e4b7} td.FAIL{background:#f4a6a6} td.ERROR{background:#e0b3e6}
td.SKIP{background:#e6e6e6;color:#666} td.FLAKY{background:#fbe7a1}
td.KNOWN{outline:3px dashed #c80}
.cls{font-size:.8em;display:block} .known{color:#a60;font-weight:bold}
pre{background:#f6f6f6;padding:.4em;font-size:.8em;white-space:pre-wrap}
.issues{background:#fff6e0;border:1px solid #e0c080;padding:.3em .6em;font-size:.85em}
"""


class Page:
    def __init__(self, known: Known, token: str = "") -> None:
        self.known = known
        self.token = token

    def link(self, path: str, **query: str) -> str:
        q = {**query, **({"token": self.token} if self.token else {})}
        tail = "&".join(f"{k}={quote(str(v))}" for k, v in q.items())
        return escape(f"{path}?{tail}" if tail else path)

    def wrap(self, title: str, body: str) -> str:
        nav = " ".join(
            f'<a href="{self.link(p)}">{n}</a>'
            for p, n in (("/", "runs"), ("/flaky", "flaky"), ("/boot-times", "boot times"),
                         ("/timeline", "timelines"))
        )  # fmt: skip
        issues = ""
        if self.known.issues:
            issues = (
                '<div class="issues">known issues: '
                + "; ".join(
                    f"<b>{escape(i.id)}</b> {escape(i.klass)} (<code>{escape(i.pattern)}</code>)"
                    for i in self.known.issues
                )
                + "</div>"
            )
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><nav>{nav}</nav>{issues}"
            f"<h1>{escape(title)}</h1>{body}</body></html>\n"
        )

    def runs(self, runs: list[dict[str, Any]]) -> str:
        head = "".join(
            f"<th>{h}</th>"
            for h in ("run", "started", "host", "kind", "name", "PASS", "FAIL", "ERROR", "SKIP",
                      "flaky")
        )  # fmt: skip
        head = f"<tr>{head}</tr>"
        rows = []
        for r in runs:
            s, href = r["Summary"], self.link("/runs/" + str(r["RunId"]))
            rows.append(
                f'<tr data-run="{r["RunId"]}"><td><a href="{href}">'
                f"{r['RunId']}</a></td><td>{escape(r['Started'])}</td><td>{escape(r['Host'])}</td>"
                f"<td>{escape(r['Kind'])}</td><td>{escape(r['Name'])}</td><td>{s['PASS']}</td>"
                f"<td>{s['FAIL']}</td><td>{s['ERROR']}</td><td>{s['SKIP']}</td>"
                f"<td>{s['Flaky']}</td></tr>"
            )
        return self.wrap("amilab runs", f"<table class='runs'>{head}{''.join(rows)}</table>")

    def _mark(self, c: dict[str, Any]) -> tuple[str, str]:
        known = self.known.of(c)
        mark = "FLAKY" if c["Flaky"] else c["Status"]
        label = mark + (f" (known {known})" if known else "")
        return mark + (" KNOWN" if known else ""), label

    def grid(self, run: dict[str, Any]) -> str:
        cells = run["Cells"]
        rows = list(dict.fromkeys(c["Row"] for c in cells))
        cols = list(dict.fromkeys(c["Kernel"] for c in cells))
        at = {(c["Row"], c["Kernel"]): c for c in cells}
        out = ["<table class='grid'><tr><th>image</th>"]
        out += [f"<th>{escape(k)}</th>" for k in cols]
        out.append("</tr>")
        for row in rows:
            out.append(f"<tr><th>{escape(row)}</th>")
            for k in cols:
                c = at.get((row, k))
                if c is None:
                    out.append("<td></td>")
                    continue
                klass, label = self._mark(c)
                out.append(
                    f'<td class="{klass}" data-cell="{escape(c["Cell"])}" '
                    f'data-status="{c["Status"]}"><a href="#cell-{c["CellId"]}">{escape(label)}'
                    f'</a><span class="cls">{escape(c["Class"])}</span></td>'
                )
            out.append("</tr>")
        out.append("</table>")
        for c in cells:
            ev = "\n".join(
                f"{'console:' + str(e['Line']) if e['Line'] else 'check'}: {e['Text']}"
                for e in c["Evidence"]
            )
            console = (
                f' <a href="{self.link("/console/" + str(c["CellId"]))}">console</a>'
                if c["ConsoleLog"] else ""
            )  # fmt: skip
            out.append(
                f'<section id="cell-{c["CellId"]}"><h3>{escape(c["Cell"])}: {c["Status"]} '
                f"{escape(c['Class'])}</h3><p>{escape(c['ImageId'])} · kernel "
                f"{escape(c['KernelName'] or c['KernelId'])} {escape(c['KernelRelease'])} · "
                f"{c['Seconds']:.1f} s · SSH {c['SecondsToSsh'] or '-'} s · attempts "
                f"{' → '.join(a.get('Status') or '' for a in c['Attempts'])}{console} · "
                f'<a href="{self.link("/history", image=c["Image"], kernel=c["Kernel"])}">'
                f"history</a></p>" + (f"<pre>{escape(ev)}</pre>" if ev else "") + "</section>"
            )
        title = f"run {run['RunId']} — {run['Started']} on {run['Host']}"
        return self.wrap(title, "".join(out))

    def timeline(self, tl: dict[str, Any], images: list[str]) -> str:
        pick = " ".join(
            f'<a href="{self.link("/timeline", image=i)}">{escape(i)}</a>' for i in images
        )
        if not tl:
            return self.wrap("timelines", f"<p>images: {pick}</p>")
        out = [f"<p>images: {pick}</p><table class='timeline'><tr><th>cell</th>"]
        out += [
            f'<th><a href="{self.link("/runs/" + str(r["RunId"]))}">{r["RunId"]}</a></th>'
            for r in tl["Runs"]
        ]
        out.append("</tr>")
        for row, cells in zip(tl["Cells"], tl["Grid"], strict=True):
            out.append(f"<tr><th>{escape(row)}</th>")
            for run, c in zip(tl["Runs"], cells, strict=True):
                if c is None:
                    out.append("<td></td>")
                    continue
                klass, label = self._mark(c)
                out.append(
                    f'<td class="{klass}" data-cell="{escape(row)}" data-run="{run["RunId"]}" '
                    f'data-status="{c["Status"]}" title="{escape(c["Class"])}">'
                    f"{escape(label)}</td>"
                )
            out.append("</tr>")
        out.append("</table>")
        return self.wrap(f"timeline of {tl['Image']}", "".join(out))

    def flaky(self, flaky: list[dict[str, Any]]) -> str:
        rows = "".join(
            f'<tr data-cell="{escape(f["Cell"])}"><td>{escape(f["Cell"])}</td><td>{f["Runs"]}</td>'
            f"<td>{f['Flips']}</td><td>{f['FlipRate']:.0%}</td><td>{f['PassedOnRetry']}</td>"
            f"<td>{f['PassRate']:.0%}</td><td>{' '.join(f['Statuses'])}</td></tr>"
            for f in flaky
        )
        head = ("<tr><th>cell</th><th>runs</th><th>flips</th><th>flip rate</th>"
                "<th>passed on retry</th><th>pass rate</th><th>verdicts</th></tr>")  # fmt: skip
        return self.wrap("flaky cells", f"<table class='flaky'>{head}{rows}</table>")

    def history(self, image: str, kernel: str, hist: list[dict[str, Any]]) -> str:
        rows = "".join(
            f'<tr><td><a href="{self.link("/runs/" + str(h["RunId"]))}">{h["RunId"]}</a></td>'
            f"<td>{escape(h['Started'])}</td><td>{escape(h['Host'])}</td>"
            f'<td class="{self._mark(h)[0]}" data-status="{h["Status"]}">{h["Status"]}</td>'
            f"<td>{escape(h['Class'])}</td><td>{escape(h['KernelRelease'])}</td></tr>"
            for h in hist
        )
        return self.wrap(f"history of {image} × {kernel}", f"<table>{rows}</table>")

    def boot_times(self, trends: list[dict[str, Any]], chart: str) -> str:
        return self.wrap("seconds to SSH per kernel", chart)
