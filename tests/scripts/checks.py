"""tests/scripts/checks.py — the tally the script tests (tests/scripts/test_*.py) share: check()
prints one "ok" / "FAIL" line per condition and counts them; summary() prints "N passed, M failed"
and returns the exit status (0 = every check passed)."""

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print("ok    " + what)
    else:
        failed += 1
        print("FAIL  " + what)


def summary():
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0
