"""What each step of a part presign costs inside the server: the gateway (default configuration) measured whole and
with one step at a time replaced by its result, side by side with the trivial handler of bench/presign_endpoint.py.

    .venv/bin/python bench/presign_costs.py [--duration 3] [--runs 5] [--connections 32]

A step's cost is the whole gateway's CPU per request minus that of the gateway without the step (median of the
rounds; every target is measured once per round, in turn, as in bench/presign_endpoint.py). The same calls in a
loop cost a third or less of this (bench/presign.py for the signer): between one request's kernel and aiohttp work
and the next, the gateway's code and data are no longer in the CPU's caches. Steps are replaced through a
``sitecustomize`` module on the gateway's path (below); a step renamed in the gateway makes its row fail.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.presign_endpoint import PATH, reference_server, wrk_script  # noqa: E402
from bench.proxy import Sample, gateway, measure  # noqa: E402
from tests.support.stack import free_port  # noqa: E402

# Each step's replacement: its result, worked out once for real where the answer depends on it.
SITECUSTOMIZE = """
import os

step = os.environ.get("BENCH_WITHOUT_STEP", "")
if step == "presign logic":  # body parse, token, checks, upload fields, counter, signature: the answer only
    from gateway.face import uploads

    real = uploads.UploadSteps.presign_part
    answers = {}

    def presign_part(self, image_id, body, *, credential):
        if body not in answers:
            answers[body] = real(self, image_id, body, credential=credential)
        return answers[body]

    uploads.UploadSteps.presign_part = presign_part
elif step == "signature":
    from gateway.core import sigv4

    real_sign = sigv4.Signer.presign_part
    urls = {}

    def sign(self, endpoint, bucket, key, **options):
        if key not in urls:
            urls[key] = real_sign(self, endpoint, bucket, key, **options)
        return urls[key]

    sigv4.Signer.presign_part = sign
elif step == "body parse":
    from gateway.core import bodies
    from gateway.face import uploads

    parsed = {}

    class PartRequest:
        @staticmethod
        def parse(body):
            if body not in parsed:
                parsed[body] = bodies.PartRequest.parse(body)
            return parsed[body]

    uploads.PartRequest = PartRequest
elif step == "token":
    from gateway.core import tokens

    real_open = tokens.TokenSealer.open
    grants = {}

    def open_token(self, token, **binding):
        if token not in grants:
            grants[token] = real_open(self, token, **binding)
        return grants[token]

    tokens.TokenSealer.open = open_token
elif step == "upload fields":
    from gateway.face import uploads

    uploads.note_upload = lambda **fields: None
elif step == "access line":
    from gateway.ops import logs

    logs.AccessLog.request = lambda self, *values: None
elif step == "metrics":
    from gateway.ops import metrics

    metrics.Metrics.answered = lambda self, *values: None
    metrics.Counter.inc = lambda self, *values, **labels: None
elif step:
    raise SystemExit(f"unknown step {step!r}")
"""

STEPS = ("presign logic", "signature", "body parse", "token", "upload fields", "access line", "metrics")
WHOLE = "gateway, default config"
TRIVIAL = "trivial handler"


def run(args: argparse.Namespace) -> None:
    samples: dict[str, list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-presign-costs-") as temp, ExitStack() as stack:
        directory = Path(temp)
        site = directory / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        script = wrk_script(directory)
        servers: dict[str, tuple[int, str]] = {}
        for step in ("", *(args.step or STEPS)):
            environ = {"PYTHONPATH": f"{site}:{ROOT}", "BENCH_WITHOUT_STEP": step}
            pid, url = stack.enter_context(gateway(free_port(), directory, environ=environ))
            servers[f"without {step}" if step else WHOLE] = (pid, url.rstrip("/") + PATH)
        servers[TRIVIAL] = stack.enter_context(reference_server(trivial=True))
        for pid, url in servers.values():
            measure(pid, url, 2, args.connections, script, warm_up_s=0)
        for round_number in range(args.runs):
            for name, (pid, url) in servers.items():
                samples.setdefault(name, []).append(
                    measure(pid, url, args.duration, args.connections, script, warm_up_s=0)
                )
            print(f"  round {round_number + 1} done", file=sys.stderr)
    whole = statistics.median(s.cpu_us_per_request for s in samples[WHOLE])
    trivial = statistics.median(s.cpu_us_per_request for s in samples[TRIVIAL])
    print(
        f"\nPUT {PATH}, wrk -t1 -c{args.connections} -d{args.duration}s, {args.runs} rounds, gateway default config; "
        "CPU µs per request, median (min–max)"
    )
    print(f"{'target':<34} {'CPU µs/request':>22} {'step costs':>11} {'÷ trivial':>10}")
    for name, runs in samples.items():
        values = [s.cpu_us_per_request for s in runs]
        middle = statistics.median(values)
        step_cost = f"{whole - middle:.1f}" if name.startswith("without") else ""
        print(
            f"{name:<34} {f'{middle:.1f} ({min(values):.0f}–{max(values):.0f})':>22} {step_cost:>11} "
            f"{middle / trivial:>9.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per measured wrk run")
    parser.add_argument("--runs", type=int, default=5, help="rounds over the targets")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--step", action="append", choices=STEPS, help="only these steps (repeatable)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
