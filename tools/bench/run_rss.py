"""Run a command and report its wall time and peak RSS: `python run_rss.py CMD ARGS...`.

The command's stdout and stderr pass through; one JSON line
`{"wall_s": ..., "peak_rss_mib": ..., "returncode": ...}` goes to the file named by the
RUN_RSS_OUT environment variable (stderr if unset). Used by `cargo xtask bench` for
`yolo-cli run`.
"""

import json
import os
import resource
import subprocess
import sys
import time


def main():
    t = time.perf_counter()
    rc = subprocess.call(sys.argv[1:])
    wall = time.perf_counter() - t
    # ru_maxrss is in KiB on Linux; the only child waited for is the command.
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    line = json.dumps({"wall_s": round(wall, 3), "peak_rss_mib": round(rss, 1), "returncode": rc})
    out = os.environ.get("RUN_RSS_OUT")
    if out:
        with open(out, "w") as f:
            f.write(line + "\n")
    else:
        print(line, file=sys.stderr)
    sys.exit(rc)


if __name__ == "__main__":
    main()
