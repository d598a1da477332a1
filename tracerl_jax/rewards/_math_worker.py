"""Math-verify worker process (run as a script by `math_reward.MathJudge`, never imported).

Protocol: one JSON object per line. The worker first prints ``{"ready": true}``. Each request
``{"id": int, "gold": str, "pred": str, "soft_timeout": int}`` gets one reply
``{"id": int, "correct": bool, "soft_timeout": bool, "error": str | null}``.

``gold`` and ``pred`` are full texts for `math_verify.parse` (the caller wraps answers in
``\\boxed{}``). math-verify's own signal-based timeouts (``soft_timeout`` seconds per parse and per
comparison) stop most slow cases without losing the process; math-verify only logs them, so a log
handler notices them. Anything they cannot interrupt (long C-level arithmetic) is handled by the
parent, which kills this process.
"""

import json
import logging
import os
import resource
import sys


class _TimeoutLog(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.hits = 0

    def emit(self, record):
        try:
            if "Timeout" in record.getMessage():
                self.hits += 1
        except Exception:
            pass


def main():
    memory = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if memory > 0:
        # A pathological expression must not eat the host's memory.
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    reply_stream = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    # Stray prints from libraries must not corrupt the protocol channel.
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from math_verify import parse, verify

    timeouts = _TimeoutLog()
    mv_logger = logging.getLogger("math_verify")
    mv_logger.addHandler(timeouts)
    mv_logger.setLevel(logging.WARNING)
    mv_logger.propagate = False

    gold_cache = {}
    reply_stream.write('{"ready": true}\n')
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        try:
            req = json.loads(line)
        except ValueError:
            continue
        timeouts.hits = 0
        reply = {"id": req.get("id"), "correct": False, "soft_timeout": False, "error": None}
        try:
            soft = int(req["soft_timeout"])
            gold = gold_cache.get(req["gold"])
            if gold is None:
                gold = parse(req["gold"], parsing_timeout=soft)
                if not timeouts.hits:
                    if len(gold_cache) > 4096:
                        gold_cache.clear()
                    gold_cache[req["gold"]] = gold
            pred = parse(req["pred"], parsing_timeout=soft)
            reply["correct"] = bool(verify(gold, pred, timeout_seconds=soft))
        except BaseException as e:  # MemoryError and RecursionError included.
            try:
                reply["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            except BaseException:
                reply["error"] = type(e).__name__
            reply["correct"] = False
        # Reported, not forced to False: math-verify may still have found an equal pair.
        reply["soft_timeout"] = timeouts.hits > 0
        reply_stream.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
