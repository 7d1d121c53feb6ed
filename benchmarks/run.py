"""Benchmarks of issue 4: our engine against R lme4 / glmmTMB and statsmodels.

    python -m benchmarks.run [--cases 1,2,...] [--out benchmarks/results]
                             [--packages hglm,lme4,glmmTMB,statsmodels] [--timeout 1200]

Generates each case's data (benchmarks/cases.py), runs every fit in a child process (peak
memory = the child's maximum resident set size, from os.wait4), stops a fit that exceeds the
time limit, and writes results.md and results.json to --out after every fit. A peer that is
not installed is reported as such, never faked.

Criterion: our p_v(h) at HL(1,1) with ML dispersions against the peer's log-likelihood (ML for
Gaussian models, Laplace for the others); ``gap`` is ours minus the best peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.cases import CASES, Case, select

PACKAGES = ("hglm", "lme4", "glmmTMB", "statsmodels")
R_PACKAGES = ("lme4", "glmmTMB")
PEERS_R = Path(__file__).with_name("peers.R")


@dataclass
class Run:
    case: str
    package: str
    status: str
    fit_seconds: float | None = None
    wall_seconds: float | None = None  # child process, start-up and data loading included
    cpu_seconds: float | None = None  # user + system CPU of the child process
    peak_rss_mb: float | None = None
    criterion: float | None = None
    converged: bool | None = None
    messages: str = ""
    details: dict = field(default_factory=dict)


def r_package_available(package: str) -> tuple[bool, str]:
    rscript = shutil.which("Rscript")
    if rscript is None:
        return False, "Rscript not found (apt-get install r-cran-lme4 r-cran-glmmtmb)"
    check = subprocess.run(
        [rscript, "-e", f"quit(status = !requireNamespace('{package}', quietly = TRUE))"],
        capture_output=True,
        timeout=120,
    )
    if check.returncode != 0:
        return False, f"R package {package} not installed"
    return True, ""


@dataclass(frozen=True)
class Limits:
    timeout: float  # seconds of wall time
    memory_gb: float | None  # address-space limit of a child (a fit that needs more fails)
    blas_threads: int | None  # OPENBLAS/OMP/MKL threads of a child; None: library default


def run_child(command: list[str], limits: Limits) -> tuple[str, float, float, float, str]:
    """Run a command in its own process group; (status, wall s, CPU s, max RSS MB, stderr).

    os.wait4 gives the resource usage of exactly this child, so every fit's peak memory is
    measured on its own. The address-space limit turns a runaway allocation into a failed fit
    instead of a machine-wide out-of-memory kill."""
    env = dict(os.environ)
    if limits.blas_threads is not None:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(limits.blas_threads)

    def limit_memory() -> None:
        if limits.memory_gb is not None:
            size = int(limits.memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    started = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        child = subprocess.Popen(
            command,
            stdout=devnull,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=env,
            preexec_fn=limit_memory,
        )
    deadline = started + limits.timeout
    status = "finished"
    while True:
        pid, wait_status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
            pid, wait_status, usage = os.wait4(child.pid, 0)
            status = "timeout"
            break
        time.sleep(0.1)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(wait_status)
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    if status != "timeout" and child.returncode != 0:
        status = f"exit code {child.returncode}"
    cpu = usage.ru_utime + usage.ru_stime
    return status, wall, cpu, usage.ru_maxrss / 1024.0, stderr[-2000:]


def run_one(case: Case, package: str, files: dict[str, Path], work: Path, limits: Limits) -> Run:
    out = work / f"case{case.key}_{package}.json"
    out.unlink(missing_ok=True)
    if package in R_PACKAGES:
        command = [
            shutil.which("Rscript") or "Rscript",
            str(PEERS_R),
            "--package",
            package,
            "--data",
            str(files["csv"]),
            "--formula",
            case.formula,
            "--family",
            case.family,
            "--trials",
            case.trials or "NA",
            "--out",
            str(out),
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "benchmarks.runners",
            package,
            "--case",
            case.key,
            "--data",
            str(files["parquet"]),
            "--out",
            str(out),
        ]
    status, wall, cpu, rss, stderr = run_child(command, limits)
    if status == "timeout":
        return Run(
            case.key,
            package,
            f"stopped after {limits.timeout:.0f} s (time limit)",
            wall_seconds=wall,
            cpu_seconds=cpu,
            peak_rss_mb=rss,
        )
    if not out.exists():
        return Run(
            case.key,
            package,
            f"failed ({status})",
            wall_seconds=wall,
            cpu_seconds=cpu,
            peak_rss_mb=rss,
            messages=stderr.strip()[-500:],
        )
    result = json.loads(out.read_text())
    return Run(
        case.key,
        package,
        result.get("status", "?"),
        fit_seconds=result.get("fit_seconds"),
        wall_seconds=wall,
        cpu_seconds=cpu,
        peak_rss_mb=rss,
        criterion=result.get("criterion", result.get("loglik")),
        converged=result.get("converged"),
        messages=str(result.get("messages", "") or ""),
        details={
            k: v
            for k, v in result.items()
            if k not in {"status", "fit_seconds", "criterion", "loglik", "converged", "messages"}
        },
    )


def write_data(case: Case, directory: Path, need_csv: bool) -> tuple[dict[str, Path], float]:
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = case.generate()
    seconds = time.perf_counter() - started
    files = {"parquet": directory / f"case{case.key}.parquet"}
    data.to_parquet(files["parquet"], index=False)
    if need_csv:
        files["csv"] = directory / f"case{case.key}.csv"
        data.to_csv(files["csv"], index=False)
    return files, seconds


def summarise(runs: list[Run]) -> dict[str, dict]:
    """Per case: our fit time and criterion against the best Laplace/ML peer (lme4, glmmTMB)."""
    summary: dict[str, dict] = {}
    for key in dict.fromkeys(r.case for r in runs):
        ours = next((r for r in runs if r.case == key and r.package == "hglm"), None)
        peers = [
            r
            for r in runs
            if r.case == key
            and r.package in R_PACKAGES
            and r.status == "ok"
            and r.criterion is not None
        ]
        entry: dict = {}
        if peers:
            best = max(peers, key=lambda r: r.criterion)
            fastest = min(peers, key=lambda r: r.fit_seconds)
            entry.update(
                best_peer=best.package,
                best_peer_criterion=best.criterion,
                fastest_peer=fastest.package,
                fastest_peer_seconds=fastest.fit_seconds,
            )
            if ours and ours.status == "ok" and ours.criterion is not None:
                entry["gap"] = ours.criterion - best.criterion
                entry["speedup"] = fastest.fit_seconds / max(ours.fit_seconds, 1e-9)
        summary[key] = entry
    return summary


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def to_markdown(report: dict) -> str:
    merged = report.get("merged_from")
    merged = [merged] if isinstance(merged, str) else (merged or [])
    lines = [
        "# hglm benchmarks (issue 4)",
        "",
        *([f"Runs merged from the runs started {', '.join(merged)}.", ""] if merged else []),
        f"Run {report['started']} on {report['machine']}; time limit per fit "
        f"{report['timeout']:.0f} s, memory {report['memory_limit_gb']} GB, BLAS threads "
        f"{report['blas_threads'] or 'default'}; load average at the end "
        f"{report.get('load_average')}. Fit s: the package's own fit time; wall s and CPU s: "
        "the whole child process (start-up, data loading); peak MB: the child's maximum RSS. "
        "Criterion: our "
        "p_v(h) (HL(1,1), ML) against the peer's log-likelihood (lme4/glmmTMB: Laplace, "
        "lmer/MixedLM: ML).",
        "",
        "| case | package | status | fit s | wall s | CPU s | peak MB | criterion | converged "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        note = r["messages"].replace("|", "/").replace("\n", " ")[:140]
        converged = "" if r["converged"] is None else ("yes" if r["converged"] else "NO")
        lines.append(
            f"| {r['case']} | {r['package']} | {r['status']} | {_fmt(r['fit_seconds'])} | "
            f"{_fmt(r['wall_seconds'])} | {_fmt(r['cpu_seconds'])} | "
            f"{_fmt(r['peak_rss_mb'], 0)} | "
            f"{_fmt(r['criterion'], 3)} | {converged} | {note} |"
        )
    lines += [
        "",
        "| case | title | data s | best peer (criterion) | fastest peer (fit s) "
        "| our gap to best peer | speed-up vs fastest peer |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, s in report["summary"].items():
        case = report["cases"][key]
        best = f"{s['best_peer']} ({s['best_peer_criterion']:,.3f})" if "best_peer" in s else "none"
        fastest = (
            f"{s['fastest_peer']} ({s['fastest_peer_seconds']:,.1f})"
            if "fastest_peer" in s
            else "none"
        )
        lines.append(
            f"| {key} | {case['title']} | {case['data_seconds']:.2f} | {best} | {fastest} | "
            f"{_fmt(s.get('gap'), 4)} | {_fmt(s.get('speedup'), 1)} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="all", help="comma-separated, e.g. 1,2,5 (default all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--packages", default=",".join(PACKAGES), help=f"subset of {','.join(PACKAGES)}"
    )
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="seconds before a fit is stopped"
    )
    parser.add_argument(
        "--memory-limit",
        type=float,
        default=20.0,
        help="GB of address space per fit (0: none); a fit needing more fails",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of an earlier results.json in --out that this run does not redo",
    )
    parser.add_argument(
        "--linalg",
        action="store_true",
        help="also time the sparse linear algebra alone on the fab cases (6, 7) selected",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="BLAS threads per fit (default: library default; 1 helps on a loaded machine)",
    )
    args = parser.parse_args(argv)
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    unknown = [p for p in packages if p not in PACKAGES]
    if unknown:
        parser.error(f"unknown package(s) {unknown}; known: {', '.join(PACKAGES)}")
    try:
        cases = select(args.cases)
    except ValueError as err:
        parser.error(str(err))

    limits = Limits(args.timeout, args.memory_limit or None, args.blas_threads)
    availability = {p: (True, "") for p in packages}
    for p in packages:
        if p in R_PACKAGES:
            availability[p] = r_package_available(p)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    # the children's own JSON answers; everything in them ends up in results.json
    work = Path(tempfile.mkdtemp(prefix="hglm-bench-"))
    report = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()})",
        "timeout": args.timeout,
        "memory_limit_gb": limits.memory_gb,
        "blas_threads": limits.blas_threads,
        "cases": {},
        "runs": [],
        "summary": {},
    }
    runs: list[Run] = []
    earlier = out / "results.json"
    if args.merge and earlier.exists():
        previous = json.loads(earlier.read_text())
        redo = {(c.key, p) for c in cases for p in packages}
        runs = [Run(**r) for r in previous["runs"] if (r["case"], r["package"]) not in redo]
        report["cases"] = dict(previous["cases"])
        report["merged_from"] = previous.get("started")

    def save() -> None:
        report["load_average"] = [round(x, 1) for x in os.getloadavg()]
        order = {key: i for i, key in enumerate(CASES)}
        runs.sort(key=lambda r: (order.get(r.case, len(order)), PACKAGES.index(r.package)))
        report["runs"] = [asdict(r) for r in runs]
        report["summary"] = summarise(runs)
        (out / "results.json").write_text(json.dumps(report, indent=2))
        (out / "results.md").write_text(to_markdown(report))

    need_csv = any(availability[p][0] for p in packages if p in R_PACKAGES)
    for case in cases:
        files, data_seconds = write_data(case, out / "data", need_csv)
        report["cases"][case.key] = {
            "title": case.title,
            "formula": case.formula,
            "family": case.family,
            "trials": case.trials,
            "data_seconds": data_seconds,
        }
        for package in packages:
            available, why = availability[package]
            if not available:
                run = Run(case.key, package, "skipped: not installed", messages=why)
            elif package in R_PACKAGES and package not in case.r_peers:
                run = Run(case.key, package, "not applicable", messages="no such model")
            elif package == "statsmodels" and case.statsmodels is None:
                run = Run(case.key, package, "not applicable", messages=case.statsmodels_note)
            else:
                print(f"case {case.key}: {package} ...", flush=True)
                run = run_one(case, package, files, work, limits)
            print(
                f"case {case.key}: {package}: {run.status} fit {_fmt(run.fit_seconds)} s, "
                f"criterion {_fmt(run.criterion, 3)}, peak {_fmt(run.peak_rss_mb, 0)} MB",
                flush=True,
            )
            runs.append(run)
            save()
    save()
    shutil.rmtree(work, ignore_errors=True)
    print(to_markdown(report))
    fab = [c.key for c in cases if c.key in {"6", "7"}]
    if args.linalg and fab:
        # its own process: its peak memory must not mix with the harness's
        command = [sys.executable, "-m", "benchmarks.linalg_bench", "--cases", ",".join(fab)]
        env = dict(os.environ)
        if limits.blas_threads is not None:
            env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(limits.blas_threads)
        subprocess.run([*command, "--out", str(out)], check=False, env=env)
    return report


if __name__ == "__main__":
    main()
