"""deploy/grafana/wan-serve.json: it parses, lays out, and asks only for series the service exports (read from
deployments/metrics.py), covering every one of them, so a renamed metric fails here and not on a blank panel."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "wan-serve.json"
SUFFIXES = {"Histogram": ("_bucket", "_sum", "_count"), "Counter": ("",), "Gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Each metric deployments/metrics.py defines, by the series names Ray exports for it (`ray_` + name)."""
    tree = ast.parse((ROOT / "deployments" / "metrics.py").read_text())
    metrics = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in SUFFIXES:
            name = f"ray_{node.args[0].value}"
            metrics[name] = {name + suffix for suffix in SUFFIXES[node.func.id]}
    return metrics


def expressions(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return exprs + [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def test_the_dashboard_parses_and_lays_out_on_grafana_s_grid() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel["targets"] and all(t["refId"] for t in panel["targets"])


def test_every_query_asks_for_exported_series_and_every_metric_is_shown() -> None:
    metrics = exported()
    assert {"ray_wan_jobs", "ray_wan_generation_seconds", "ray_wan_model_load_seconds"} <= set(metrics)
    series = set().union(*metrics.values())
    used: set[str] = set()
    for expr in expressions(json.loads(DASHBOARD.read_text())):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        names = set(re.findall(r"\bray_wan_\w+", expr))
        assert names <= series, f"{expr} asks for {names - series}, which nothing exports"
        used |= names
    unshown = {m for m, names in metrics.items() if not names & used}
    assert not unshown, f"no panel shows {unshown}"
