"""The boot-time chart: seconds to SSH per kernel over runs, as one inline SVG (a line per
kernel, a circle per run with `data-kernel`, `data-run` and `data-seconds`)."""

from __future__ import annotations

from html import escape
from typing import Any

COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666")
W, H, PAD = 900, 360, 48


def chart(trends: list[dict[str, Any]]) -> str:
    runs = sorted({(p["Started"], p["RunId"]) for t in trends for p in t["Points"]})
    if not runs:
        return "<p>no passing cells with a time to SSH yet</p>"
    xs = {run_id: i for i, (_, run_id) in enumerate(runs)}
    top = max(p["SecondsToSsh"] for t in trends for p in t["Points"]) * 1.1 or 1.0

    def x(run_id: int) -> float:
        return PAD + (W - 2 * PAD) * (xs[run_id] / max(1, len(runs) - 1))

    def y(sec: float) -> float:
        return H - PAD - (H - 2 * PAD) * sec / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H + 20 * len(trends)}" '
        f'class="boot-times" role="img"><rect width="100%" height="100%" fill="#fff"/>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#444"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#444"/>',
    ]
    for i in range(5):
        sec = top * i / 4
        parts.append(
            f'<text x="{PAD - 6}" y="{y(sec) + 4:.1f}" font-size="11" text-anchor="end">'
            f"{sec:.0f}</text>"
        )
    parts.append(
        f'<text x="{W / 2}" y="{H - 10}" font-size="12" text-anchor="middle">run (oldest → '
        f'newest)</text><text x="12" y="{H / 2}" font-size="12" transform="rotate(-90 12 '
        f'{H / 2})" text-anchor="middle">seconds to SSH</text>'
    )
    for n, t in enumerate(trends):
        colour = COLOURS[n % len(COLOURS)]
        pts = " ".join(f"{x(p['RunId']):.1f},{y(p['SecondsToSsh']):.1f}" for p in t["Points"])
        kernel = escape(t["Kernel"])
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        for p in t["Points"]:
            parts.append(
                f'<circle cx="{x(p["RunId"]):.1f}" cy="{y(p["SecondsToSsh"]):.1f}" r="4" '
                f'fill="{colour}" data-point="1" data-kernel="{kernel}" data-run="{p["RunId"]}" '
                f'data-seconds="{p["SecondsToSsh"]}"><title>{kernel}: run {p["RunId"]}, '
                f"{p['SecondsToSsh']} s</title></circle>"
            )
        parts.append(
            f'<text x="{PAD}" y="{H + 14 + 20 * n}" font-size="12" fill="{colour}">'
            f"● {kernel} ({', '.join(escape(x) for x in t['Labels'])})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
