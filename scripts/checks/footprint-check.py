#!/usr/bin/env python3
"""Cross-check forja's energy / CO2e estimate of a stage against codecarbon on the
same workload, so that both figures can go side by side in docs/BENCHMARKS.md.

  scripts/checks/footprint-check.py [--forja target/release/forja] [--steps 1000]
                             [--out /tmp/footprint-check] [--country USA] [--dry-run]

The workload is a real pre-training stage on the bundled Tiny Shakespeare, with
the shakespeare-char pipeline's model and optimiser (nanoGPT's CPU configuration:
4 layers, 4 heads, 128 wide, block 64, batch 12), cut to --steps steps (1000 by
default: about 45 s on 2 CPU cores). Set-up, not tracked: the clean,
train_tokenizer and tokenize stages into OUT/clean, OUT/tokenizer, OUT/tokenize.
Tracked: `forja stage pretrain ... --out OUT/pretrain`, run as a child process
inside a codecarbon OfflineEmissionsTracker (tracking_mode="process", which
counts the CPU time of the tracker's process and all its children; sampled every
second). The child is waited for without being reaped (waitid WNOWAIT) and the
tracker is stopped while it is still a zombie, so its CPU time of the last
sampling interval is still counted. forja's own estimate is read from
OUT/pretrain/footprint.json. Prints

  footprint-check: forja_wh=X codecarbon_wh=Y ratio=R          (ratio = forja / codecarbon)
  footprint-check: forja_co2e_g=X codecarbon_co2e_g=Y (forja at G g/kWh, codecarbon ...)
  footprint-check: forja energy at codecarbon's intensity: ...  (like-for-like CO2e)

plus what each side measured (forja's energy_source; codecarbon's CPU mode: RAPL,
or a TDP / CPU-load model, and its RAM model). Exit 0 when both sides produced a
figure (a measurement, not a threshold), 1 with the reason on stderr otherwise.

--dry-run tracks a 5-second busy loop (one core) instead of forja and prints
codecarbon's figures only: a check of the peer set-up.

codecarbon lives in its own venv, never the product's: on first use this script
creates .venv-footprint at the repository root (python3 -m venv; pip install
codecarbon==3.3.2) and re-executes itself with that venv's python.
"""
import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-footprint"
VENV_PY = VENV / "bin" / "python"
CODECARBON = "codecarbon==3.3.2"
TAG = "footprint-check:"


def fail(msg):
    print(f"{TAG} {msg}", file=sys.stderr)
    sys.exit(1)


def say(msg):
    print(f"{TAG} {msg}", flush=True)


def in_venv():
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_venv():
    """Re-executes this script in .venv-footprint, creating it first if needed."""
    if in_venv():
        return
    if not VENV_PY.exists():
        python3 = shutil.which("python3") or sys.executable
        print(f"{TAG} creating {VENV} (python3 -m venv)", file=sys.stderr, flush=True)
        if subprocess.run([python3, "-m", "venv", str(VENV)]).returncode != 0:
            fail(f"could not create {VENV} with `{python3} -m venv`")
    if subprocess.run([str(VENV_PY), "-c", "import codecarbon"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        print(f"{TAG} installing {CODECARBON} into {VENV}", file=sys.stderr, flush=True)
        pip = [str(VENV_PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", CODECARBON]
        if subprocess.run(pip).returncode != 0:
            fail(f"`pip install {CODECARBON}` into {VENV} failed")
    os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve()), *sys.argv[1:]])


def run_setup(cmd, log):
    """Runs an untracked set-up stage; fails with the tail of its output."""
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = Path(log).read_text(errors="replace").splitlines()[-15:]
        fail(f"set-up stage failed (exit {rc}): {' '.join(map(str, cmd))}\n" + "\n".join(tail))


def tracked(cmd, country, log):
    """Runs `cmd` as a child inside a codecarbon tracker. Returns (emissions data,
    tracker, exit code, wall seconds, child CPU seconds from rusage)."""
    import codecarbon
    from codecarbon import OfflineEmissionsTracker

    if codecarbon.__version__ != CODECARBON.split("==")[1]:
        print(f"{TAG} warning: codecarbon {codecarbon.__version__} in {VENV}, expected {CODECARBON}",
              file=sys.stderr)
    logging.getLogger("codecarbon").setLevel(logging.ERROR)  # its init logs before log_level applies
    tracker = OfflineEmissionsTracker(
        country_iso_code=country,
        measure_power_secs=1,
        save_to_file=False,
        log_level="error",
        tracking_mode="process",
        project_name="forja-footprint-check",
    )
    with open(log, "w") as f:
        # The child starts stopped (a shell that stops itself, then execs the
        # command under the same pid), so the tracker's baseline includes its pid:
        # codecarbon's process mode counts a pid's CPU time only from the first
        # sample that sees it, which would lose the child's first second.
        try:
            proc = subprocess.Popen(["sh", "-c", 'kill -STOP $$; exec "$0" "$@"', *map(str, cmd)],
                                    cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        except OSError as e:
            fail(f"could not start {cmd[0]}: {e}")
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            fail(f"could not start {cmd[0]} stopped (wait status {status})")
        tracker.start()
        t0 = time.perf_counter()
        os.kill(proc.pid, signal.SIGCONT)
        # Wait without reaping: the zombie keeps its CPU times readable, so the
        # tracker's final sample still counts the child's last interval.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        wall = time.perf_counter() - t0
        tracker.stop()
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    data = getattr(tracker, "final_emissions_data", None)
    return data, tracker, proc.returncode, wall, rusage.ru_utime + rusage.ru_stime


def tdp_origin(model, hw):
    """Where codecarbon's TDP came from: its CPU registry, or a default."""
    if getattr(hw, "_is_generic_tdp", False):
        return "generic default, no TDP found"
    try:
        from codecarbon.core.cpu import TDP
        if TDP._get_cpu_power_from_registry(TDP.__new__(TDP), model or "") is not None:
            return f"{model!r} found in codecarbon's CPU registry"
        return f"{model!r} not in codecarbon's CPU registry: its default of 4 W per thread"
    except Exception as e:  # private API; only descriptive
        return f"origin unknown: {e}"


def codecarbon_method(tracker, data):
    """One line on what codecarbon measured: RAPL or a model, with its constants."""
    parts = []
    for hw in getattr(tracker, "_hardware", []):
        name = type(hw).__name__
        if name == "CPU":
            mode = getattr(hw, "_mode", "?")
            kind = {"intel_rapl": "RAPL energy counters", "cpu_load": "model: TDP x CPU load",
                    "constant": "model: constant share of TDP"}.get(mode, mode)
            tdp = getattr(hw, "_tdp", None)
            desc = f"cpu={hw!r} mode={mode} [{kind}]"
            if mode != "intel_rapl":
                desc += f" tdp={tdp} W ({tdp_origin(data.cpu_model, hw)})"
                tracking = getattr(hw, "_tracking_mode", "?")
                if mode == "cpu_load" and tracking == "process" and tdp and data.cpu_count:
                    desc += f" = {tdp / data.cpu_count:g} W per busy thread of the tracked processes"
            parts.append(desc + f" tracking_mode={getattr(hw, '_tracking_mode', '?')}")
        elif name == "RAM":
            forced = getattr(hw, "_force_ram_power", None)
            parts.append(f"ram={hw!r} [" + (f"forced {forced} W" if forced is not None else
                         "model: 5 W per estimated DIMM, at least 10 W") + "]")
        else:
            parts.append(f"{name.lower()}={hw!r}")
    rapl = Path("/sys/class/powercap/intel-rapl").exists()
    parts.append(f"rapl_files={'present' if rapl else 'absent'} (/sys/class/powercap/intel-rapl)")
    parts.append(f"cpu_model={data.cpu_model!r} cpu_count={data.cpu_count}")
    parts.append(f"avg cpu_power={data.cpu_power:.2f} W avg ram_power={data.ram_power:.2f} W"
                 f" cpu_util={data.cpu_utilization_percent:.0f}% pue={data.pue}")
    return " ".join(parts)


def codecarbon_intensity(data, country):
    """g CO2e / kWh codecarbon applied: emissions / energy, or its table when no energy."""
    if data.energy_consumed > 0:
        return data.emissions * 1e3 / data.energy_consumed
    try:
        from codecarbon.input import DataSource
        return float(DataSource().get_global_energy_mix_data()[country]["carbon_intensity"])
    except Exception:
        return float("nan")


def report_codecarbon(data, tracker, country, wall, cpu_s):
    if data is None:
        fail("codecarbon produced no final emissions data (tracker.stop() failed; "
             "rerun with log_level='debug' in this script to see why)")
    g_per_kwh = codecarbon_intensity(data, country)
    say(f"codecarbon {data.codecarbon_version}: energy_wh={data.energy_consumed * 1e3:.4f}"
        f" (cpu_wh={data.cpu_energy * 1e3:.4f} ram_wh={data.ram_energy * 1e3:.4f}"
        f" gpu_wh={data.gpu_energy * 1e3:.4f}) co2e_g={data.emissions * 1e3:.5f}"
        f" at {g_per_kwh:.1f} g/kWh ({data.country_name}, {data.country_iso_code})"
        f" duration_s={data.duration:.2f}")
    say(f"codecarbon method: {codecarbon_method(tracker, data)}")
    line = f"tracked child: wall_s={wall:.2f} cpu_s={cpu_s:.2f} (rusage)"
    cpu = next((hw for hw in getattr(tracker, "_hardware", []) if type(hw).__name__ == "CPU"), None)
    if (cpu is not None and getattr(cpu, "_mode", "") == "cpu_load"
            and getattr(cpu, "_tracking_mode", "") == "process" and getattr(cpu, "_tdp", 0) and data.cpu_count):
        # Load model: energy = (TDP / threads) x CPU seconds, so its CPU energy says
        # how many CPU seconds it saw (the child's, plus this script's own few).
        seen = data.cpu_energy * 3.6e6 / (cpu._tdp / data.cpu_count)
        line += f"; codecarbon's CPU energy covers {seen:.2f} cpu_s"
        if seen < 0.9 * cpu_s:
            print(f"{TAG} warning: codecarbon saw only {seen:.2f} of the child's {cpu_s:.2f} CPU seconds "
                  "(it misses processes reaped between its 1 s samples)", file=sys.stderr)
    say(line)
    return g_per_kwh


def busy_loop_cmd(seconds):
    code = f"import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < {seconds}:\n    pass\n"
    return [sys.executable, "-c", code]


def stage_cmds(forja, out, steps):
    """The set-up stages and the tracked pretrain stage: shakespeare-char's parameters."""
    o = Path(out)
    common = ["--seed", "1337", "--device", "cpu"]
    setup = [
        ("clean", [forja, "stage", "clean", "--input", "files=fixtures/tinyshakespeare/input.txt",
                   "--set", "read.unit=paragraph", "--set", "clean.dedup=false",
                   "--set", "split.mode=tail", "--set", "split.val_fraction=0.1",
                   *common, "--out", str(o / "clean")]),
        ("tokenizer", [forja, "stage", "train_tokenizer", "--input", f"corpus={o / 'clean' / 'train.arrow'}",
                       "--set", "kind=char", "--set", "special_tokens=[]",
                       *common, "--out", str(o / "tokenizer")]),
        ("tokenize", [forja, "stage", "tokenize",
                      "--input", f"tokenizer={o / 'tokenizer' / 'tokenizer.json'}",
                      "--input", f"train={o / 'clean' / 'train.arrow'}",
                      "--input", f"val={o / 'clean' / 'val.arrow'}",
                      "--set", 'doc_separator="\\n\\n"',
                      *common, "--out", str(o / "tokenize")]),
    ]
    params = {
        "batch_size": 12, "max_steps": steps, "eval_interval": min(250, steps), "eval_iters": 20,
        "checkpoint_interval": steps, "log_interval": 10,
        "model.block_size": 64, "model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128,
        "model.dropout": 0.0,
        "optim.lr": 1e-3, "optim.min_lr": 1e-4, "optim.warmup_steps": min(100, steps // 10),
        "optim.lr_decay_steps": steps, "optim.beta2": 0.99, "optim.weight_decay": 0.1,
        "optim.grad_clip": 1.0,
    }
    pretrain = [forja, "stage", "pretrain",
                "--input", f"tokenizer={o / 'tokenizer' / 'tokenizer.json'}",
                "--input", f"train={o / 'tokenize' / 'train.tokens.arrow'}",
                "--input", f"val={o / 'tokenize' / 'val.tokens.arrow'}"]
    for k, v in params.items():
        pretrain += ["--set", f"{k}={v}"]
    pretrain += [*common, "--out", str(o / "pretrain")]
    return setup, pretrain


FOOTPRINT_KEYS = ("wall_s", "cpu_s", "energy_wh", "energy_source", "pue", "grid_g_per_kwh", "co2e_g")


def read_footprint(path):
    if not path.exists():
        fail(f"forja wrote no {path}: this forja binary does not record its footprint yet "
             "(expected until the footprint.json change is built: cargo build --release)")
    try:
        fp = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"{path} is not readable JSON: {e}")
    missing = [k for k in FOOTPRINT_KEYS if k not in fp]
    if missing:
        fail(f"{path} lacks {', '.join(missing)} (contract: {', '.join(FOOTPRINT_KEYS)})")
    return fp


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--forja", default="target/release/forja", help="forja binary (relative to the repository root)")
    ap.add_argument("--steps", type=int, default=1000, help="pretrain steps (1000: ~45 s on 2 cores)")
    ap.add_argument("--out", default="/tmp/footprint-check", help="working folder for the stages' outputs")
    ap.add_argument("--country", default="USA", help="ISO 3166-1 alpha-3 code for codecarbon's grid intensity")
    ap.add_argument("--dry-run", action="store_true", help="track a 5 s busy loop instead of forja; codecarbon only")
    args = ap.parse_args()

    ensure_venv()
    try:
        import codecarbon  # noqa: F401
    except ImportError as e:
        fail(f"codecarbon does not import in {VENV} ({e}); remove {VENV} and rerun")

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    if args.dry_run:
        say("dry run: tracking a 5 s single-core busy loop (child process)")
        data, tracker, rc, wall, cpu_s = tracked(busy_loop_cmd(5), args.country, out / "busy.log")
        if rc != 0:
            fail(f"busy loop exited {rc}")
        report_codecarbon(data, tracker, args.country, wall, cpu_s)
        return 0

    forja = Path(args.forja)
    forja = forja if forja.is_absolute() else ROOT / forja
    if not (forja.is_file() and os.access(forja, os.X_OK)):
        fail(f"{forja} is not an executable (build it: cargo build --release)")
    if args.steps < 1:
        fail("--steps must be at least 1")

    setup, pretrain = stage_cmds(str(forja), out, args.steps)
    for name, cmd in setup:
        run_setup(cmd, out / f"{name}.log")
    pretrain_dir = out / "pretrain"
    if pretrain_dir.exists():
        shutil.rmtree(pretrain_dir)  # no resume from old checkpoints, no stale footprint.json

    say(f"tracking: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(pretrain))}")
    data, tracker, rc, wall, cpu_s = tracked(pretrain, args.country, out / "pretrain.log")
    if rc != 0:
        tail = (out / "pretrain.log").read_text(errors="replace").splitlines()[-15:]
        fail(f"forja stage pretrain exited {rc} (log: {out / 'pretrain.log'})\n" + "\n".join(tail))
    last = [l for l in (out / "pretrain.log").read_text(errors="replace").splitlines() if l.startswith("pretrain:")]
    if last:
        say(f"forja: {last[-1]}")
    cc_g_per_kwh = report_codecarbon(data, tracker, args.country, wall, cpu_s)

    fp = read_footprint(pretrain_dir / "footprint.json")
    f_wh, f_pue, f_grid, f_co2 = (float(fp[k]) for k in ("energy_wh", "pue", "grid_g_per_kwh", "co2e_g"))
    cc_wh, cc_cpu_wh, cc_co2 = data.energy_consumed * 1e3, data.cpu_energy * 1e3, data.emissions * 1e3

    def ratio(a, b):
        return f"{a / b:.3f}" if b > 0 else "n/a"

    say(f"forja method: energy_source={fp['energy_source']!r} pue={f_pue} wall_s={fp['wall_s']}"
        f" cpu_s={fp['cpu_s']} flops={fp.get('flops')}")
    say(f"forja_wh={f_wh:.4f} codecarbon_wh={cc_wh:.4f} ratio={ratio(f_wh, cc_wh)}")
    say(f"forja_wh={f_wh:.4f} codecarbon_cpu_wh={cc_cpu_wh:.4f} ratio={ratio(f_wh, cc_cpu_wh)}"
        " (codecarbon's CPU part only, without its RAM estimate)")
    say(f"forja_co2e_g={f_co2:.5f} codecarbon_co2e_g={cc_co2:.5f} (forja at {f_grid:g} g/kWh,"
        f" codecarbon at its own intensity for {args.country} = {cc_g_per_kwh:.1f} g/kWh)")
    f_at_cc = f_wh * f_pue * cc_g_per_kwh / 1e3
    say(f"forja energy at codecarbon's intensity: forja_co2e_g={f_at_cc:.5f} codecarbon_co2e_g={cc_co2:.5f}"
        f" ratio={ratio(f_at_cc, cc_co2)} (forja pue {f_pue}, codecarbon pue {data.pue})")
    say(f"time: forja wall_s={fp['wall_s']} cpu_s={fp['cpu_s']};"
        f" tracked wall_s={wall:.2f} cpu_s={cpu_s:.2f} (rusage of the child)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
