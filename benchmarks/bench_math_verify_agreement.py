"""Agreement of r1hpc's math reward with Math-Verify's own test suite.

Math-Verify ships its parametrised (gold, prediction, expected) cases in its sdist. This reads them
with ``ast`` from the sdist (never copied into this repo), scores every prediction with
``math_reward_batch`` and reports how often the score equals the expected verdict, overall, per
test function and per mode:

- ``answer_tag``: the prediction given as ``<answer>pred</answer>`` (the R1-Zero template's answer
  form): the equivalence check, with the answer's position already settled;
- ``response``: the prediction as the whole response, default ``MathConfig`` (boxes, the answer tag,
  "the answer is"): what training pays for such a text;
- ``response_all_fallbacks``: the same with every fallback on (also "####" and the last number).

Cases with a non-default Math-Verify option (``precision``, ``strict``, ``allow_set_relation_comp``)
are kept and tagged: r1hpc always checks with Math-Verify's defaults.

Usage: python benchmarks/bench_math_verify_agreement.py [--sdist PATH.tar.gz]
           [--out benchmarks/results/math_verify_agreement_cpu.json] [--workers 1]
Without ``--sdist`` the sdist of the installed Math-Verify version is downloaded with pip into a
temporary directory.
"""
from __future__ import annotations

import argparse
import ast
import collections
import importlib.metadata
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bench_rewards import machine  # this script's own folder is on sys.path
from r1hpc.rewards.extract import FALLBACKS, extract_answer
from r1hpc.rewards.math import MathConfig, math_pool, math_reward_batch

MODES = {
    "answer_tag": (lambda pred: f"<answer>{pred}</answer>", MathConfig()),
    "response": (lambda pred: pred, MathConfig()),
    "response_all_fallbacks": (lambda pred: pred, MathConfig(fallbacks=list(FALLBACKS))),
}
DEFAULT_OPTIONS = {"precision": 6, "strict": True, "allow_set_relation_comp": False}
EXPECTED_NAMES = ("expected", "result")


def download_sdist(dest: Path) -> Path:
    """The sdist of the installed Math-Verify version, fetched with pip (no build, no deps)."""
    version = importlib.metadata.version("math-verify")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                    "--quiet", f"math-verify=={version}", "-d", str(dest)], check=True)
    return next(dest.glob("math_verify-*.tar.gz"))


def _argnames(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [n.strip() for n in node.value.split(",")]
    if isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.elts):
        return [e.value for e in node.elts]
    return None


def _is_parametrize(dec: ast.expr) -> bool:
    return (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute)
            and dec.func.attr == "parametrize")


def cases_from_source(source: str, filename: str) -> tuple[list[dict], list[dict]]:
    """(cases, skipped) from one test file: every parametrised case naming gold, pred and an
    expected verdict; a case whose values are not literals (an f-string, a call) is skipped."""
    cases, skipped = [], []
    for fn in ast.walk(ast.parse(source, filename)):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for dec in fn.decorator_list:
            if not _is_parametrize(dec) or len(dec.args) < 2:
                continue
            names = _argnames(dec.args[0])
            expected = next((n for n in EXPECTED_NAMES if names and n in names), None)
            if not names or "gold" not in names or "pred" not in names or expected is None:
                continue
            if not isinstance(dec.args[1], (ast.List, ast.Tuple)):
                continue
            for elt in dec.args[1].elts:
                where = {"file": filename, "test": fn.name, "line": elt.lineno}
                try:
                    values = dict(zip(names, ast.literal_eval(elt)))
                except ValueError:
                    skipped.append({**where, "why": "not a literal"})
                    continue
                options = {k: v for k, v in values.items() if k in DEFAULT_OPTIONS and v != DEFAULT_OPTIONS[k]}
                cases.append({**where, "gold": values["gold"], "pred": values["pred"],
                              "expected": int(bool(values[expected])), "options": options})
    return cases, skipped


def read_cases(sdist: Path) -> tuple[list[dict], list[dict]]:
    cases, skipped = [], []
    with tarfile.open(sdist) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].startswith("test_") \
                    and parts[2].endswith(".py"):
                text = tar.extractfile(member).read().decode()
                c, s = cases_from_source(text, parts[2])
                cases += c
                skipped += s
    return cases, skipped


def _short(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[:n] + "..."


def reason(case: dict, response: str, cfg: MathConfig) -> str:
    """Why a case disagrees, where that is mechanical: a non-default Math-Verify option, no answer
    found where r1hpc looks (box, answer tag, enabled fallbacks), several different boxes
    (anti-spraying); "checked" = an answer was extracted and compared (see docs/rewards.md)."""
    if case["options"]:
        return "non_default_option"
    ext = extract_answer(response, cfg.fallbacks, cfg.max_answer_chars)
    if ext.answer is None:
        return "no_answer_found"
    return "several_boxes" if len(set(ext.boxed)) > 1 else "checked"


def score(cases: list[dict], workers: int) -> dict:
    out = {}
    with math_pool(workers) as pool:
        for mode, (wrap, cfg) in MODES.items():
            t0 = time.perf_counter()
            responses = [wrap(c["pred"]) for c in cases]
            scores = math_reward_batch(responses, [c["gold"] for c in cases], config=cfg, pool=pool)
            seconds = time.perf_counter() - t0
            per_test: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
            disagreements = []
            for c, r, s in zip(cases, responses, scores):
                key = f'{c["file"]}::{c["test"]}'
                per_test[key][1] += 1
                if int(s) == c["expected"]:
                    per_test[key][0] += 1
                else:
                    disagreements.append({"file": c["file"], "test": c["test"], "line": c["line"],
                                          "gold": _short(c["gold"]), "pred": _short(c["pred"]),
                                          "expected": c["expected"], "r1hpc": int(s), "options": c["options"],
                                          "reason": reason(c, r, cfg)})
            agree = sum(a for a, _ in per_test.values())
            default = [(c, s) for c, s in zip(cases, scores) if not c["options"]]
            out[mode] = {
                "agree": agree, "cases": len(cases), "agreement": round(agree / len(cases), 4),
                "agreement_default_options": round(sum(int(s) == c["expected"] for c, s in default) / len(default), 4),
                "cases_default_options": len(default),
                "false_accepts": sum(d["r1hpc"] == 1 for d in disagreements),
                "false_rejects": sum(d["r1hpc"] == 0 for d in disagreements),
                "reasons": dict(collections.Counter(d["reason"] for d in disagreements).most_common()),
                "seconds": round(seconds, 2),
                "per_test": {k: {"agree": a, "cases": n} for k, (a, n) in sorted(per_test.items())},
                "disagreements": disagreements,
            }
            print(f"{mode}: {agree}/{len(cases)} agree ({agree / len(cases):.1%}); "
                  f"{out[mode]['false_accepts']} accepted where Math-Verify expects 0, "
                  f"{out[mode]['false_rejects']} rejected where it expects 1 ({seconds:.1f} s)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist", type=Path, help="Math-Verify sdist (.tar.gz); downloaded with pip if omitted")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/math_verify_agreement_cpu.json"))
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(Path(tmp))
        cases, skipped = read_cases(sdist)
    if not cases:
        raise SystemExit(f"{sdist}: no parametrised (gold, pred, expected) cases found under tests/")
    result = {
        "what": "r1hpc math_reward_batch against the parametrised cases of Math-Verify's test suite",
        "sdist": sdist.name,
        "math_verify": importlib.metadata.version("math-verify"),
        "machine": dict(machine(), verifier_workers=args.workers),
        "cases": len(cases),
        "skipped": skipped,
        "modes": score(cases, args.workers),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
