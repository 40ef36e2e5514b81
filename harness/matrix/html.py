"""The HTML report: one self-contained page (inline CSS, no script, nothing fetched) with
the coloured grid, then per cell its verdict, class, evidence, checks, console excerpt and
boot phases as a stacked bar chart. Each grid cell carries `data-cell` and `data-status` so
a browser test can read the rendered page."""

from __future__ import annotations

from html import escape
from pathlib import Path

from harness.matrix.report import Run, disagreement_lines
from harness.matrix.results import CellResult, Evidence
from harness.matrix.static import ModuleCell

PHASES = ("firmware", "kernel", "ramdisk", "init", "login")
PHASE_COLOURS = {
    "firmware": "#8da0cb",
    "kernel": "#66c2a5",
    "ramdisk": "#fc8d62",
    "init": "#e78ac3",
    "login": "#a6d854",
}

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table.grid{border-collapse:collapse;margin:1em 0}
.grid th,.grid td{border:1px solid #999;padding:.4em .6em;text-align:center;vertical-align:top}
.grid th.row{text-align:left}
td.PASS{background:#b7e4b7} td.FAIL{background:#f4a6a6} td.ERROR{background:#e0b3e6}
td.SKIP{background:#e6e6e6;color:#666} td.FLAKY{background:#fbe7a1}
.cls{font-size:.8em;display:block} .mod{font-size:.75em;display:block;color:#333}
.disagree{color:#b00;font-weight:bold} .chg{font-weight:bold;font-size:.8em;display:block}
.regression{color:#b00} .fix{color:#06c}
section.cell{border-top:1px solid #ccc;padding:.5em 0}
pre{background:#f6f6f6;padding:.5em;overflow-x:auto;font-size:.8em}
.bar{display:flex;height:1.2em;width:40em;background:#eee}
.bar div{height:100%;font-size:.7em;overflow:hidden;white-space:nowrap;color:#000}
.legend span{display:inline-block;padding:0 .5em;margin-right:.3em}
table.checks td,table.checks th{border:1px solid #ccc;padding:.2em .4em;font-size:.9em}
"""


def _evidence_line(e: Evidence) -> str:
    return f"{'console:' + str(e.line) if e.line else 'check'}: {e.text}"


def _anchor(i: int) -> str:
    return f"cell-{i}"


def _grid(run: Run, index: dict[str, int]) -> str:
    rows, cols, cells = run.grid()
    out = ['<table class="grid"><tr><th>image</th>']
    out += [f"<th>{escape(c)}</th>" for c in cols]
    out.append("</tr>")
    for row in rows:
        out.append(f'<tr><th class="row">{escape(row)}</th>')
        for col in cols:
            r = cells.get((row, col))
            if r is None:
                out.append("<td></td>")
                continue
            change = run.change(r)
            label = r.mark + (" (known)" if r.verdict.known_issue else "")
            out.append(
                f'<td class="{r.mark}" data-cell="{escape(r.cell.key)}" '
                f'data-status="{r.status}" data-flaky="{str(r.flaky).lower()}">'
                f'<a href="#{_anchor(index[r.cell.key])}">{escape(label)}</a>'
                + (f'<span class="cls">{escape(r.verdict.klass)}</span>' if r.verdict.klass else "")
                + (f'<span class="chg {change}">{change}</span>' if change else "")
                + "".join(_module_line(m) for m in r.modules)
                + "</td>"
            )
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _module_line(m: ModuleCell) -> str:
    """The module column: static verdict / boot verdict, marked where they disagree."""
    boot = {True: " / loaded", False: " / not loaded", None: ""}[m.boot]
    agree = "" if m.agree is None else str(m.agree).lower()
    css = "mod disagree" if m.agree is False else "mod"
    return (f'<span class="{css}" data-module="{escape(m.module)}" '
            f'data-static="{escape(m.static)}" data-agree="{agree}">'
            f"{escape(m.module)}: {escape(m.static + boot)}</span>")  # fmt: skip


def _disagreements(run: Run) -> str:
    lines = disagreement_lines(run)
    if not lines:
        return ""
    return ("<h2>static vs boot disagreements</h2><ul>"
            + "".join(f"<li>{escape(x)}</li>" for x in lines) + "</ul>")  # fmt: skip


def _phases(r: CellResult, scale: float) -> str:
    report = r.final.report if r.final else {}
    phases = report.get("BootPhases") or {}
    if not phases:
        return ""
    bars = []
    for name in PHASES:
        if name in phases:
            width = 100 * phases[name] / scale
            bars.append(
                f'<div style="width:{width:.1f}%;background:{PHASE_COLOURS[name]}" '
                f'title="{name} {phases[name]:.2f} s">{name}</div>'
            )
    cpu = report.get("QemuCpuSecondsToSsh")
    text = ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
    cpu_text = f"; QEMU CPU {cpu:.2f} s to SSH" if cpu is not None else ""
    return f'<p>boot phases: {escape(text)}{cpu_text}</p><div class="bar">{"".join(bars)}</div>'


def _cell_section(r: CellResult, i: int, scale: float, change: str) -> str:
    v = r.verdict
    report = r.final.report if r.final else {}
    parts = [
        f'<section class="cell" id="{_anchor(i)}"><h3>{escape(r.cell.key)}: {r.mark}'
        + (f" — {escape(v.klass)}" if v.klass else "")
        + (f' <span class="chg {change}">{change}</span>' if change else "")
        + "</h3>"
    ]
    facts = [
        ("image", f"{r.cell.image} {report.get('ImageId') or r.cell.image_id}"),
        ("kernel", f"{report.get('KernelId') or 'own'} {report.get('KernelRelease', '')}"),
        ("instance", report.get("InstanceId", "")),
        ("seconds", f"{r.seconds:.1f}"),
        ("attempts", " → ".join(a.verdict.status for a in r.attempts) or "none"),
    ]
    if v.known_issue:
        facts.append(("known issue", v.known_issue))
    parts.append("<p>" + "; ".join(f"{k}: {escape(str(val))}" for k, val in facts) + "</p>")
    if v.evidence:
        parts.append(
            "<p>evidence:</p><pre>"
            + "\n".join(
                escape(f"{'console:' + str(e.line) if e.line else 'check'}: {e.text}")
                for e in v.evidence
            )
            + "</pre>"
        )
    for n, a in enumerate(r.attempts[:-1], 1):  # what a retry went past (a flaky cell's ERROR)
        parts.append(
            f"<p>attempt {n}: {a.verdict.status} {escape(a.verdict.klass)}</p><pre>"
            + "\n".join(escape(_evidence_line(e)) for e in a.verdict.evidence)
            + "</pre>"
        )
    checks = report.get("Checks") or []
    if checks:
        parts.append(
            '<table class="checks"><tr><th>check</th><th>result</th><th>expected</th>'
            "<th>actual</th></tr>"
        )
        for c in checks:
            parts.append(
                f"<tr><td>{escape(c['Name'])}</td><td>{'pass' if c['Passed'] else 'FAIL'}"
                f"</td><td>{escape(str(c['Expected']))}</td>"
                f"<td>{escape(str(c['Actual']))}</td></tr>"
            )
        parts.append("</table>")
    parts.append(_phases(r, scale))
    analysis = report.get("BootAnalysis") or {}
    if analysis:
        parts.append(
            "<details><summary>systemd-analyze</summary><pre>"
            + escape("\n\n".join(analysis.get(k, "") for k in ("Time", "CriticalChain", "Blame")))
            + "</pre></details>"
        )
    if r.final and r.final.console_excerpt:
        parts.append(
            "<details><summary>console excerpt</summary><pre>"
            f"{escape(r.final.console_excerpt)}</pre></details>"
        )
    parts.append("</section>")
    return "".join(parts)


def render(run: Run) -> str:
    index = {r.cell.key: i for i, r in enumerate(run.results)}
    scale = max(
        [sum((r.final.report.get("BootPhases") or {}).values()) for r in run.results if r.final]
        + [1.0]
    )
    s = run.summary()
    summary = ", ".join(f"{s[k]} {k}" for k in ("PASS", "FAIL", "ERROR", "SKIP"))
    if s["Flaky"]:
        summary += f", {s['Flaky']} flaky"
    if s["Disagreements"]:
        summary += f", {s['Disagreements']} static/boot disagreements"
    if run.interrupted:
        summary += f"; interrupted: {s['NotRun']} cells not run"
    comp = ""
    if run.comparison:
        c = run.comparison
        comp = (
            f"<p>against {escape(c.baseline)}: {len(c.regressions)} regressions, "
            f"{len(c.fixes)} fixes, {len(c.new)} new, {len(c.vanished)} vanished"
            + "".join(f"<br>vanished: {escape(k)}" for k in c.vanished)
            + "</p>"
        )
    legend = "".join(f'<span style="background:{PHASE_COLOURS[p]}">{p}</span>' for p in PHASES)
    return "".join(
        [
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>amilab matrix</title>",
            f"<style>{CSS}</style></head><body><h1>amilab matrix</h1>",
            f"<p>{escape(summary)} — {run.accelerator.upper()}, {run.jobs} at once, "
            f"{run.seconds:.0f} s</p>",
            comp,
            _grid(run, index),
            _disagreements(run),
            f'<p class="legend">boot phases: {legend}</p>',
            *(_cell_section(r, index[r.cell.key], scale, run.change(r)) for r in run.results),
            "</body></html>\n",
        ]
    )


def write(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(run))
    tmp.replace(path)
