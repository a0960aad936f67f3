"""Turn the benchmarks' JSON into RESULTS.md (tables, the machine, the commands) and PNG plots.

    python -m bench.report [--out-dir bench/out] [--report-dir bench]

Every figure in the report is read from the JSON; the acceptance lines are computed from it, so
they say FAIL when a run misses a target. A benchmark whose JSON is missing is listed as not run.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the non-interactive backend

from bench.common import redis_forks  # noqa: E402

# Acceptance targets of the performance issue.
UPDATE_RATIO_MAX = 1.1
TNP_ADD_RATIO_MIN = 1000
GP_ADD_RATIO_MIN = 100
POSTS_PER_S_MIN, POST_P99_MS_MAX = 1500, 50
PREDICTS_PER_S_MIN, PREDICT_P99_MS_MAX = 150, 100


def _load(out: Path, name: str) -> dict | list | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.3g}"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.1f} KiB"


def model_section(costs: dict | None, memory: list | None, train: dict | None) -> list[str]:
    lines = ["## 1. Model: cost against context size", ""]
    if costs is None:
        return [*lines, "Not run.", ""]
    cfg = costs["config"]
    lines += [
        f"Checkpoint `{costs['checkpoint']}` (d_model {cfg['d_model']}, {cfg['n_heads']} heads, "
        f"{cfg['n_blocks']} blocks, {cfg['n_latents']} latents), {costs['torch_threads']} torch thread. "
        f"Per-point update: one `net.update` with a single point on a state that already holds N points "
        f"(built in chunks of 1024 at {costs['build_points_per_s']:,.0f} points/s), timed round-robin over N, "
        f"median of {costs['update'][0]['repeats']} repeats. Derived latents stay lazy.",
        "",
    ]
    lines += _table(
        ["N", "update median (µs)", "update p90 (µs)", "÷ N=10", "state bytes"],
        [
            [f"{r['n']:,}", f"{r['update_median_us']:.1f}", f"{r['update_p90_us']:.1f}", f"{r['ratio_to_n10']:.3f}",
             f"{r['state_bytes']:,}"]
            for r in costs["update"]
        ],
    )  # fmt: skip
    last = costs["update"][-1]
    if last["n"] >= 10**6:
        ok = last["ratio_to_n10"] <= UPDATE_RATIO_MAX
        verdict = f"ratio {last['ratio_to_n10']:.3f} {_verdict(ok)}"
    else:
        verdict = f"not checked: this run stops at N = {last['n']:,} (quick mode)"
    lines += [
        f"Acceptance 1 (update at N = 10^6 ≤ {UPDATE_RATIO_MAX} × N = 10): {verdict}",
        "",
        "![update latency and memory against N](update_cost.png)",
        "",
        "Predict latency against the number of targets M (state of 1,000 points). *Fresh*: the first "
        "predict after an update, which derives the latents; *cached*: a later predict on the same state.",
        "",
    ]
    lines += _table(
        ["M", "fresh (ms)", "cached (ms)"],
        [[f"{r['m']:,}", f"{r['fresh_median_ms']:.2f}", f"{r['cached_median_ms']:.2f}"] for r in costs["predict"]],
    )
    lines += ["Conditioning throughput (`net.condition` with chunking, best of 2):", ""]
    lines += _table(
        ["N", "chunk", "points/s"],
        [[f"{r['n']:,}", r["chunk_size"], f"{r['points_per_s']:,.0f}"] for r in costs["conditioning"]],
    )
    if memory is not None:
        point_bytes = 4 * (cfg["dim_x"] + cfg["dim_y"])
        lines += [
            "Peak RSS of conditioning N points (chunks of 1024), each N in a fresh process. The input "
            "arrays (x and y of all N points, held by the caller and counted) are listed apart; below "
            "1024 points the chunk itself is smaller, so its activations are too.",
            "",
        ]
        lines += _table(
            ["N", "peak RSS", "over the first", "of which inputs", "points/s", "state bytes"],
            [
                [f"{r['n']:,}", f"{r['peak_rss_mb']:.1f} MB", f"{r['extra_over_first_mb']:+.1f} MB",
                 f"{r['n'] * point_bytes / 2**20:.1f} MB", f"{r['points_per_s']:,.0f}", f"{r['state_bytes']:,}"]
                for r in memory
            ],
        )  # fmt: skip
    if train is not None:
        rows, machine = train["rows"], train["machine"]
        lines += [
            "Training throughput: whole AdamW steps on paper-protocol batches, GP sampling in the loop as "
            "training does, per precision (`--precision`: bf16 autocast or float32) and `--compile` of "
            f"`model.train`; rounds: {len(rows[0]['tasks_per_s_by_round'])}, configs and options alternated in "
            f"each; warm-up: the first {machine['warmup_steps']} steps, untimed, with the compilation. The GP "
            f"sampling alone takes {machine['gp_sampling_ms_per_batch']} ms per batch. Load average before/after: "
            f"{machine['load_average_before']} / {machine['load_average_after']}.",
            "",
        ]
        lines += _table(
            ["config", "precision", "compiled", "parameters", "batch", "tasks/s (best)", "median", "each round",
             "warm-up", "torch threads"],
            [
                [r["config"], r["precision"], "yes" if r["compiled"] else "no", f"{r['parameters']:,}",
                 r["batch_size"], r["tasks_per_s"], r["tasks_per_s_median"],
                 ", ".join(map(str, r["tasks_per_s_by_round"])), f"{r['warmup_s']:.0f} s", machine["threads"]]
                for r in rows
            ],
        )  # fmt: skip
        paper = max((r for r in rows if r["config"].startswith("paper")), key=lambda r: r["tasks_per_s"])
        verdict = _verdict(paper["tasks_per_s"] >= 110)
        option = f"{paper['precision']}, {'compiled' if paper['compiled'] else 'eager'}"
        rate = f"{paper['tasks_per_s']} tasks/s, best round (median {paper['tasks_per_s_median']}; {option})"
        criterion = "paper config, batch 16, data sampled in the loop, >= 110 tasks/s"
        lines += [f"Acceptance 4 ({criterion}): {rate}: {verdict}", ""]
    return lines


def peers_section(peers: dict | None, plots: bool) -> list[str]:
    lines = ["## 2. Against peers, same run, same CPU", ""]
    if peers is None:
        return [*lines, "Not run.", ""]
    lines += [
        "Cost of adding one point to a context of N points, then predicting 100 targets, medians. "
        "TNP: re-encoding Transformer NP (TNP-D mask, same width/depth, random weights); "
        "GP: exact GP, incremental Cholesky (float64). See `bench/peers.py` for what each step includes.",
        "",
    ]
    rows = []
    for r in peers["rows"]:
        rows.append(
            [
                f"{r['n']:,}",
                _ms(r["ours_add_s"]),
                _ms(r.get("tnp_add_s")),
                _ms(r.get("gp_add_s")),
                _ms(r["ours_add_predict_s"]),
                _ms(r.get("tnp_add_predict_s")),
                _ms(r.get("gp_add_predict_s")),
                _mib(r["ours_memory_bytes"]),
                _mib(r["tnp_memory_bytes"]) + " (points)" if "tnp_memory_bytes" in r else "n/a",
                _mib(r["gp_memory_bytes"]),
            ]
        )
    lines += _table(
        ["N", "add: ours (ms)", "TNP", "GP", "add+predict: ours (ms)", "TNP", "GP", "memory: ours", "TNP", "GP"], rows
    )
    for r in peers["rows"]:
        notes = [r[k] for k in ("tnp_skipped", "gp_skipped") if k in r]
        if notes:
            lines += [f"- N = {r['n']:,}: " + "; ".join(notes)]
    lines += [
        "",
        "Log-likelihood of the 100 targets (one exact RBF task per N; the GP has the task's true "
        "hyperparameters, so it is the oracle; the TNP has random weights and is not scored):",
        "",
    ]
    lines += _table(
        ["N", "ours", "exact GP"],
        [[f"{r['n']:,}", f"{r['ours_ll']:.3f}", f"{r['gp_ll']:.3f}"] for r in peers["rows"] if "gp_ll" in r],
    )
    at = next((r for r in peers["rows"] if r["n"] == 10_000), None)
    if at is not None and "tnp_add_over_ours" in at and "gp_add_over_ours" in at:
        ok = at["tnp_add_over_ours"] >= TNP_ADD_RATIO_MIN and at["gp_add_over_ours"] >= GP_ADD_RATIO_MIN
        lines += [
            f"Acceptance 2 (N = 10,000: adding a point ≥ {TNP_ADD_RATIO_MIN}× cheaper than the TNP, "
            f"≥ {GP_ADD_RATIO_MIN}× cheaper than the GP): {at['tnp_add_over_ours']:,.0f}× and "
            f"{at['gp_add_over_ours']:,.0f}× {_verdict(ok)}. Our state stays "
            f"{at['ours_memory_bytes']:,} bytes at every N; the GP's factor grows as N².",
            "",
        ]
    else:
        lines += ["Acceptance 2: N = 10,000 was not run (quick mode).", ""]
    if plots:
        lines += ["![cost of adding a point against N](peers.png)", ""]
    return lines


def service_section(load: dict | None, plots: bool) -> list[str]:
    lines = ["## 3. Service under load", ""]
    if load is None:
        return [*lines, "Not run.", ""]
    lines += [
        f"Server: `{load['server_command']}`. {load['sessions']:,} sessions created through the API, each "
        f"seeded with {load['seed_points_per_session']} points; wrk ({load['wrk_threads']} thread per wrk, "
        f"`bench/wrk/sessions.lua`) on the same machine, {load['duration_s']:g} s per scenario. Context posts "
        f"carry one point and a distinct Idempotency-Key; predicts ask for {load['targets_per_predict']} targets. "
        "CPU: average cores busy during the scenario, from /proc (*API*: the server's "
        f"{load['scenarios'][0].get('api_processes', 1)} processes but redis-server, i.e. its supervisor "
        "and worker processes, summed; *other*: everything else on the machine).",
        "",
        f"Redis bytes per session: {load['redis_bytes_per_session_used_memory']:,.0f} (growth of `used_memory` "
        f"over creating the sessions, divided by their number); {load['redis_bytes_per_session_memory_usage']:,} "
        "(`MEMORY USAGE` of one session's keys).",
        "",
    ]
    rows = []
    for s in load["scenarios"]:
        cpu = s["cpu_cores"]
        for i, w in enumerate(s["loads"]):
            lat = w["latency_ms"]
            rows.append(
                [
                    s["scenario"] if i == 0 else "",
                    w["mode"],
                    w["connections"],
                    f"{w['requests_per_s']:,.0f}",
                    f"{lat['p50']:.1f}",
                    f"{lat['p95']:.1f}",
                    f"{lat['p99']:.1f}",
                    w["error_count"],
                    f"{cpu['api']:.2f} / {cpu['redis']:.2f} / {cpu['wrk']:.2f} / {cpu['other']:.2f}" if i == 0 else "",
                    redis_forks(s) if i == 0 else "",
                ]
            )
    lines += _table(
        ["scenario", "requests", "connections", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
         "cores: API / Redis / wrk / other", "Redis forks (AOF rewrites)"],
        rows,
    )  # fmt: skip
    by_name = {s["scenario"]: s["loads"][0] for s in load["scenarios"]}
    for name, minimum, p99_max, label in (
        ("context_spread", POSTS_PER_S_MIN, POST_P99_MS_MAX, "Acceptance 3, context_spread"),
        ("predict_spread", PREDICTS_PER_S_MIN, PREDICT_P99_MS_MAX, "Acceptance 3, predict_spread"),
        ("context_hot", POSTS_PER_S_MIN, POST_P99_MS_MAX, "Same target, one hot session: context_hot"),
        (
            "predict_hot",
            PREDICTS_PER_S_MIN,
            PREDICT_P99_MS_MAX,
            "Same target, one hot session while writers post to it: predict_hot",
        ),
    ):
        w = by_name.get(name)
        if w is not None:
            ok = w["requests_per_s"] >= minimum and w["latency_ms"]["p99"] <= p99_max
            lines += [
                f"- {label}: {w['requests_per_s']:,.0f}/s (target ≥ {minimum}) with p99 "
                f"{w['latency_ms']['p99']:.1f} ms (target ≤ {p99_max}) {_verdict(ok)}"
            ]
    lines += [""]
    if plots:
        lines += ["![service throughput and latency](service_load.png)", ""]
    return lines


def speedups_section(out: Path) -> list[str]:
    """Before/after ratios of each service change, from ``bench.ab_service`` runs (ab_*.json, in name order)."""
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("ab_*.json"))]
    lines = ["## 4. Making the service fast: each change measured before and after", ""]
    if not runs:
        return [*lines, "No before/after runs in this output directory.", ""]
    lines += [
        "Found with py-spy under wrk load, fixed one at a time. Each row runs both versions at once "
        "(two servers started like `make run`) and alternates the same wrk scenario between them, "
        "round after round; medians over the rounds. On a shared CPU, *API CPU per request* is the "
        "steadier figure; throughput and p99 move with the other load.",
        "",
    ]
    rows = []
    for run in runs:
        for name, r in run["summary"].items():
            rates = f"{r['before_requests_per_s']:.0f} → {r['after_requests_per_s']:.0f}"
            rows.append(
                [
                    run["label"],
                    name,
                    f"{rates} (×{r['throughput_ratio']:.2f})",
                    f"{r['before_p99_ms']:.0f} → {r['after_p99_ms']:.0f}",
                    f"×{r['api_cpu_per_request_ratio']:.2f}",
                    run["rounds"],
                ]
            )
    lines += _table(["change", "scenario", "req/s", "p99 ms", "API CPU per request", "rounds"], rows)
    lines += ["Commands (`--before`: a `git archive` export of the commit before the change):", ""]
    lines += [f"- {run['label']}: `{run['command']}`" for run in runs]
    return [*lines, ""]


def plot_model(costs: dict, memory: list | None, path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    n = [r["n"] for r in costs["update"]]
    a.plot(n, [r["update_median_us"] for r in costs["update"]], "o-", label="median")
    a.plot(n, [r["update_p90_us"] for r in costs["update"]], "s--", alpha=0.6, label="p90")
    a.set(xscale="log", xlabel="points already in the state (N)", ylabel="µs per single-point update")
    a.set_ylim(bottom=0)
    a.set_title("update latency")
    a.legend()
    b.plot(n, [r["state_bytes"] / 1024 for r in costs["update"]], "o-", label="state (KiB)")
    if memory:
        b.plot([r["n"] for r in memory], [r["peak_rss_mb"] for r in memory], "s-", label="peak RSS (MB)")
    b.set(xscale="log", yscale="log", xlabel="N", title="memory")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_peers(peers: dict, path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("ours", "CMANP (ours)"), ("tnp", "re-encoding TNP"), ("gp", "incremental exact GP")):
        rows = [r for r in peers["rows"] if f"{key}_add_s" in r]
        a.plot([r["n"] for r in rows], [r[f"{key}_add_s"] * 1e3 for r in rows], "o-", label=label)
        rows = [r for r in peers["rows"] if f"{key}_memory_bytes" in r]
        b.plot([r["n"] for r in rows], [r[f"{key}_memory_bytes"] for r in rows], "o-", label=label)
    a.set(xscale="log", yscale="log", xlabel="N", ylabel="ms to add one point", title="cost of one update")
    b.set(xscale="log", yscale="log", xlabel="N", ylabel="bytes", title="memory per context (TNP: raw points)")
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_service(load: dict, path: Path) -> None:
    labels, rates, p50, p99 = [], [], [], []
    for s in load["scenarios"]:
        for w in s["loads"]:
            labels.append(f"{s['scenario']}\n({w['mode']})")
            rates.append(w["requests_per_s"])
            p50.append(w["latency_ms"]["p50"])
            p99.append(w["latency_ms"]["p99"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.bar(labels, rates)
    a.set(ylabel="requests/s", title="throughput")
    x = range(len(labels))
    b.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
    b.bar([i + 0.2 for i in x], p99, width=0.4, label="p99")
    b.set_xticks(list(x), labels)
    b.set(ylabel="ms", title="latency")
    b.legend()
    for axis in (a, b):
        axis.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def calibration_section(cost: dict | None) -> list[str]:
    lines = ["## 5. What online calibration costs the context-post path (issue 8)", ""]
    if cost is None:
        return [*lines, "Not run.", ""]
    median, cpu = cost["median_posts_per_s"], cost["median_server_cpu_ms_per_post"]
    lines += [
        "Two servers started as `make run` starts them, sharing one Redis, differing only in "
        "`CMANP_CALIBRATION`; rounds alternate between them (`bench/calibration_cost.py`).",
        "",
    ]
    lines += _table(
        ["scoring", "median posts/s", "median server CPU ms/post"],
        [[mode, f"{median[mode]:,.1f}", f"{cpu[mode]:.3f}"] for mode in ("on", "off")],
    )
    lines += [
        f"Throughput ratio on/off: {cost['throughput_ratio_on_over_off']:.3f} (per round: "
        + ", ".join(f"{r:.3f}" for r in cost["round_ratios_on_over_off"])
        + f"); implied by CPU per post: {cost['cpu_throughput_ratio_on_over_off']:.3f}.",
        "",
    ]
    return lines


def _statuses(statuses: list[str]) -> str:
    """``["ok", "miscalibrated", "ok"]`` -> ``"ok ×2, miscalibrated"``."""
    counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
    return ", ".join(s if n == 1 else f"{s} ×{n}" for s, n in counts.items())


def real_data_section(real: dict | None, held_out: dict | None = None) -> list[str]:
    lines = ["## 6. Real series: calibration beside a fitted GP (issue 17)", ""]
    if real is None:
        return [*lines, "Not run.", ""]
    quick = " Quick mode: the first window of three series only." if real["quick"] else ""
    lines += [
        f"Model `{real['model']}` (`{real['checkpoint']}`) through the service, y_transform `{real['y_transform']}`; "
        "the development set of `model/data/real_series.py` (windows of 120 points, a random half as context "
        "posted one point per request in time order, the other half as targets), `bench/real_data.py`. "
        "GP: scikit-learn, ML-II on the context, RBF or Matérn-5/2 (+ white noise) chosen by the marginal "
        "likelihood; *best on targets* picks the kernel after seeing the targets. Scores on the targets in "
        "user units: log likelihood (LL) per point, RMSE, 95% interval coverage; *gap*: model − GP in LL "
        "(unit-free). *Prequential*: the session's own 95% coverage of its context points, and its "
        f"calibration status.{quick}",
        "",
        *_real_data_table(real),
    ]
    if held_out is not None:
        lines += [
            "### The held-out set",
            "",
            "The same protocol on 10 other series (`HELD_OUT_SERIES`), which no serving choice was made on "
            f"(`bench/real_data.py --set held-out`), the same model and y_transform `{held_out['y_transform']}`.",
            "",
            *_real_data_table(held_out),
        ]
    return lines


def _real_data_table(real: dict) -> list[str]:
    rows = []
    for r in real["series"]:
        m, g, b = r["model"], r["gp"], r["gp_best_on_targets"]
        rows.append(
            [r["series"], r["windows"], r["targets"], f"{m['ll']:.3f}", f"{g['ll']:.3f}", f"{r['ll_gap']:+.3f}",
             f"{b['ll']:.3f}", f"{m['rmse']:.4g}", f"{g['rmse']:.4g}", f"{m['coverage_95']:.2f}",
             f"{g['coverage_95']:.2f}", f"{r['prequential_coverage_95']:.2f}", _statuses(r["statuses"])]
        )  # fmt: skip
    a = real["average"]
    rows.append(
        [f"**average of {len(real['series'])} series**", "", "", f"{a['model_ll']:.3f}", f"{a['gp_ll']:.3f}",
         f"**{a['ll_gap']:+.3f}**", f"{a['gp_best_on_targets_ll']:.3f}", f"×{a['rmse_ratio']:.2f} (model / GP)", "",
         f"{a['model_coverage_95']:.2f}", f"{a['gp_coverage_95']:.2f}", f"{a['prequential_coverage_95']:.2f}",
         f"{a['miscalibrated_series']} series miscalibrated"]
    )  # fmt: skip
    lines = _table(
        ["series", "windows", "targets", "LL model", "LL GP", "gap", "LL GP best on targets", "RMSE model",
         "RMSE GP", "95% cov. model", "95% cov. GP", "prequential 95% cov.", "status"],
        rows,
    )  # fmt: skip
    bounds = "; ".join(real["at_bounds"]) if real["at_bounds"] else "none"
    lines += [
        f"The average LL columns mix units (each series' own); the gap and the coverages do not. GP "
        f"hyperparameters on a bound of their range: {bounds}. Gap to the best-on-targets GP: "
        f"{a['ll_gap_best_on_targets']:+.3f}. Time: GP fits {real['gp_seconds']:.0f} s, service "
        f"{real['service_seconds']:.0f} s (start, posts, predicts).",
        "",
    ]
    return lines


def calibration_monitor_section(general: dict | None, rbf: dict | None) -> list[str]:
    lines = ["## 7. The calibration monitor's error rates (issue 17)", ""]
    if general is None and rbf is None:
        return [*lines, "Not run.", ""]
    lines += [
        "Sessions of N points drawn from each model's own training prior, scored as the service scores a "
        "session below its fold threshold (`bench/calibration_monitor.py`). *Fine*: the model's intervals "
        "at 200 fresh inputs of the same function, each read 32 times with fresh noise, pass every tolerance the "
        "monitor's tests claim (mean clipped z^2 within std 1.5x too wide to 1.15x too narrow, 50% and 95% "
        "coverage within the 1.5x bands); *alarms when fine* is the false-alarm rate that matters. "
        "*Variance-fine* applies the z^2 condition alone (the earlier definition). *All alarms* also counts "
        "sessions on which the model itself is off. *Power*: every predictive variance divided by 1.5^2 or 2^2. "
        "The default model's false-alarm rate over 4,096 sessions per N, on seeds run once after the tests were "
        "chosen, is in its model card (3 alarms in 8,764 fine sessions).",
        "",
    ]
    rows = []
    for result in (r for r in (general, rbf) if r is not None):
        name = Path(result["checkpoint"]).stem + (f" (seed {result['seed']})" if "seed" in result else "")
        for n, d in result["sizes"].items():
            rates = d["rates"]
            rows.append(
                [name, result["data"]["kind"], n, d["sessions"], f"{rates['fine']:.1%}",
                 f"{d['alarms_when_fine']} of {d['fine']}",
                 f"{d.get('alarms_when_variance_fine', '-')} of {d.get('variance_fine', '-')}",
                 f"{rates['false_alarms']:.1%}",
                 f"{rates['flagged_at_1.5x']:.1%}", f"{rates['flagged_at_2x']:.1%}"]
            )  # fmt: skip
    header = ["model", "prior", "N", "sessions", "fine", "alarms when fine", "alarms when variance-fine"]
    lines += _table([*header, "all alarms", "power 1.5x", "power 2x"], rows)
    return lines


def replication_wait_section(wait: dict | None) -> list[str]:
    title = "## 8. What durable acknowledgements cost: WAIT for a replica (issue 22)"
    if wait is None:
        return [title, "", "Not run.", ""]
    rate, rounds, seconds = wait["rate_per_s"], wait["rounds"], wait["seconds_per_round"]
    intro = (
        "A bundled redis-server (`appendfsync always`) and one replica on the same machine; single-point posts "
        f"with a key each over 100 sessions, open loop at {rate:.0f} posts/s (latency counted from each post's "
        f"scheduled time), {rounds} rounds of {seconds:.0f} s per setting, the settings alternating "
        "(`bench/replication_wait.py`). *store*: `SessionStore.append` alone; *store, one at a time*: the same, "
        "each append after the previous one answered (the cost of one append, free of queueing); *HTTP*: "
        "`python -m service`, one process per setting. Load average at the end: "
        + ", ".join(f"{x:.1f}" for x in wait.get("load_average", ()))
        + "."
    )
    lines, rows = [title, "", intro, ""], []
    labels = {"store": "store", "store_serial": "store, one at a time", "http": "HTTP"}
    for path, label in labels.items():
        by_mode = wait["results"][path]
        for mode, r in by_mode.items():
            rows.append(
                [label, mode, f"{r['posts']:,}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['max_ms']:.1f}"]
            )
    lines += _table(["path", "setting", "posts", "p50 ms", "p99 ms", "max ms"], rows)
    costs = []
    for path, label in labels.items():
        off, on = wait["results"][path]["no WAIT"], wait["results"][path]["WAIT 1 replica"]
        costs.append(f"{label}: {on['p50_ms'] - off['p50_ms']:+.2f} ms p50, {on['p99_ms'] - off['p99_ms']:+.2f} ms p99")
    lines += ["Cost of WAIT 1: " + "; ".join(costs) + ". A replica on another host adds its round trip.", ""]
    return lines


def capacity_section(capacity: dict | None) -> list[str]:
    title = "## 9. Redis memory of many sessions, a mix of small and large (issue 22)"
    if capacity is None:
        return [title, "", "Not run.", ""]
    intro = (
        f"{capacity['sessions']:,} sessions of the shipped model ({capacity['state_bytes']:,}-byte state) written "
        f"with the service's Lua scripts into a bundled redis-server in {capacity['write_seconds']:.0f} s "
        "(`bench/capacity.py`; a key per post, a fold every 256 points). `MEMORY USAGE` summed over each "
        "session's keys:"
    )
    lines, rows = [title, "", intro, ""], []
    for kind, r in capacity["by_kind"].items():
        low, high = r["points"]
        points = f"{low:,}" if low == high else f"{low:,}-{high:,}"
        rows.append(
            [kind, f"{r['share']:.0%}", points, r["points_per_post"], f"{r['mean_points']:,.0f}",
             f"{r['mean_bytes']:,.0f}", f"{r['max_bytes']:,}"]
        )  # fmt: skip
    lines += _table(["sessions", "share", "points", "per post", "mean points", "mean bytes", "max bytes"], rows)
    lines += [
        f"Per session over the mix: {capacity['memory_usage_per_session_bytes']:,.0f} bytes of `MEMORY USAGE`, "
        f"{capacity['used_memory_per_session_bytes']:,.0f} bytes of `used_memory` growth (keyspace overhead "
        "included). Projected, one copy of the data (`used_memory` per session x sessions):",
        "",
    ]
    lines += _table(
        ["sessions", "data", "with one replica each, +30% headroom"],
        [[f"{int(k):,}", _gib(v["used_memory_bytes"]), _gib(v["used_memory_bytes"] * 2 * 1.3)]
         for k, v in capacity["projection"].items()],
    )  # fmt: skip
    return lines


def event_costs_section(costs: dict | None, command: str | None) -> list[str]:
    title = "## 10. Event model (CMHP): the cost of an event against the history (issue 18)"
    if costs is None:
        return [title, "", "Not run.", ""]
    cfg, thp, m = costs["config"], costs["transformer"], costs["machine"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average"])
    start = ", ".join(f"{x:.1f}" for x in m.get("load_average_start", ()))
    note = f" {costs['note'].rstrip('.')}." if costs.get("note") else ""
    by_round = costs["transformer_over_cmhp_by_round"]
    lines = [
        title,
        "",
        f"`{command or 'python -m bench.event_costs'}`, {m['date']} (commit {m['commit']}; {m['cpu_model']}, "
        f"{m['cpu_count']} CPUs; load average {start} at the start, {load} at the end).{note} "
        f"CMHP: {costs['weights']}, d_model "
        f"{cfg['d_model']}, {cfg['n_heads']} heads, {cfg['n_blocks']} blocks, {cfg['n_latents']} latents, "
        f"{costs['torch_threads']} torch thread. A step is one `update` with one event on a state already holding "
        f"N events (built in chunks of 4,096 at {costs['build_events_per_s']:,.0f} events/s), then one "
        "`next_event` forecast on the new state (its latents derived afresh). Interleaved: each of "
        f"{costs['rounds']} rounds runs {costs['per_round']} steps at every N (rotating order) and one step of "
        "the transformer; medians over all rounds.",
        "",
    ]
    lines += _table(
        ["N", "update (µs)", "forecast (µs)", "step (µs)", "step p90 (µs)", "÷ smallest N", "state bytes"],
        [
            [f"{r['n']:,}", f"{r['update_median_us']:,.1f}", f"{r['forecast_median_us']:,.1f}",
             f"{r['step_median_us']:,.1f}", f"{r['step_p90_us']:,.1f}", f"{r['ratio_to_smallest']:.3f}",
             f"{r['state_bytes']:,}"]
            for r in costs["cmhp"]
        ],
    )  # fmt: skip
    ok = costs["acceptance"]
    at = next(r for r in costs["cmhp"] if r["n"] == thp["n"])
    lines += [
        f"Re-encoding transformer (`bench/baselines/transformer_hawkes.py`: THP-style temporal encoding and "
        f"causal self-attention, d_model {thp['config']['d_model']}, {thp['config']['n_heads']} heads, "
        f"{thp['config']['n_layers']} layers, the CMHP's head; random weights, a cost baseline): adding an event to "
        f"a history of N = {thp['n']:,} means encoding all {thp['n'] + 1:,} events again: "
        f"{thp['step_median_ms']:,.1f} ms (median of {thp['repeats']}, range {thp['step_min_ms']:,.0f} to "
        f"{thp['step_max_ms']:,.0f}) against the CMHP's {at['step_median_us']:,.1f} µs at the same N; the ratio of "
        f"each round's transformer step to that round's CMHP median: {min(by_round):,.0f}× to "
        f"{max(by_round):,.0f}× (median {statistics.median(by_round):,.0f}×). Its memory "
        "grows with the history (the events themselves, and O(N) activations per layer); the CMHP state does not.",
        "",
        f"- Acceptance 3 (a step at N = {ok['largest_n']:,} within {ok['step_ratio_max']} × N = "
        f"{costs['cmhp'][0]['n']}; state bytes constant): ratio {ok['step_ratio_largest_to_smallest']:.3f} "
        f"{_verdict(ok['step_ratio_ok'] and ok['largest_n'] >= 10**6 and ok['state_bytes_constant'])}"
        + ("" if ok["largest_n"] >= 10**6 else " (quick mode: N = 10^6 not run)"),
        f"- Acceptance 4 (adding an event and forecasting at N = {thp['n']:,}: the transformer ≥ "
        f"{ok['transformer_ratio_min']}× the CMHP): {costs['transformer_over_cmhp']:,.0f}× "
        f"{_verdict(ok['transformer_ratio_ok'] and thp['n'] >= 10**4)}"
        + ("" if thp["n"] >= 10**4 else " (quick mode: N = 10^4 not run)"),
        "",
    ]
    return lines


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def write_report(out: Path, report_dir: Path) -> Path:
    """Write RESULTS.md and the plots into report_dir from the JSON in out; returns the report's path."""
    costs, memory, peers = _load(out, "model_costs"), _load(out, "constant_memory"), _load(out, "peers")
    train, load = _load(out, "train_throughput"), _load(out, "service_load")
    machine, runs = _load(out, "machine") or {}, _load(out, "runs") or []
    report_dir.mkdir(parents=True, exist_ok=True)
    if costs is not None:
        plot_model(costs, memory, report_dir / "update_cost.png")  # type: ignore[arg-type]
    if peers is not None:
        plot_peers(peers, report_dir / "peers.png")  # type: ignore[arg-type]
    if load is not None:
        plot_service(load, report_dir / "service_load.png")  # type: ignore[arg-type]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m bench` (`make bench`; `--quick`: `make bench-quick`) from the JSON in `{out}/`; "
        "do not edit by hand. If the machine was shared with other jobs, the load average below "
        "and the *other* CPU column of section 3 say how much.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", "## Commands", "", "Run from the repository root, each in its own process:", ""]
    order = [
        "model_costs", "constant_memory", "peers", "train_throughput", "service_load", "calibration_cost", "real_data",
        "real_data_held_out", "calibration_monitor", "calibration_monitor_rbf",
        "replication_wait", "capacity", "event_costs",
    ]  # fmt: skip
    runs = sorted(runs, key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    lines += [f"- `{r['command']}` ({r['seconds']:.0f} s)" for r in runs]
    lines += [f"- total: {sum(r['seconds'] for r in runs):.0f} s", ""]
    lines += model_section(costs, memory, train)  # type: ignore[arg-type]
    lines += peers_section(peers, peers is not None)  # type: ignore[arg-type]
    lines += service_section(load, load is not None)  # type: ignore[arg-type]
    lines += speedups_section(out)
    lines += calibration_section(_load(out, "calibration_cost"))  # type: ignore[arg-type]
    lines += real_data_section(_load(out, "real_data"), _load(out, "real_data_held_out"))  # type: ignore[arg-type]
    lines += calibration_monitor_section(_load(out, "calibration_monitor"), _load(out, "calibration_monitor_rbf"))  # type: ignore[arg-type]
    lines += replication_wait_section(_load(out, "replication_wait"))  # type: ignore[arg-type]
    lines += capacity_section(_load(out, "capacity"))  # type: ignore[arg-type]
    command = next((r["command"] for r in runs if r["name"] == "event_costs"), None)
    lines += event_costs_section(_load(out, "event_costs"), command)  # type: ignore[arg-type]
    path = report_dir / "RESULTS.md"
    path.write_text("\n".join(lines))
    return path


def replace_section(report: Path, section: list[str]) -> None:
    """Put ``section`` (its first line a ``## N.`` heading) in place of the report's section with
    that heading, or at the end: one benchmark's figures refreshed where the other benchmarks'
    JSON is not at hand (the rest of the report, and its machine header, stay as they were)."""
    lines = report.read_text().split("\n")
    number = section[0].split()[1]  # "10."
    start = next((i for i, line in enumerate(lines) if line.startswith(f"## {number} ")), None)
    if start is None:
        lines = [*lines, "", *section] if lines[-1] else [*lines, *section]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section
    report.write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out-dir", type=Path, default=Path("bench/out"))
    p.add_argument("--report-dir", type=Path, default=Path("bench"))
    p.add_argument("--event-costs-command", help="refresh only section 10 from event_costs.json, run by this command")
    args = p.parse_args()
    if args.event_costs_command:
        report = args.report_dir / "RESULTS.md"
        replace_section(report, event_costs_section(_load(args.out_dir, "event_costs"), args.event_costs_command))  # type: ignore[arg-type]
        print(f"wrote section 10 of {report}")
        return
    print(f"wrote {write_report(args.out_dir, args.report_dir)}")


if __name__ == "__main__":
    main()
