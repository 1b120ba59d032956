"""Exit codes of ``ptd``, which scripts may rely on (also listed in ``ptd --help``)."""

OK = 0          # done; nothing wrong found
FAILURE = 1     # damage found (verify), or some store, file or entry could not be processed
USAGE = 2       # wrong arguments, or a path or name that does not lead to a cache
DECLINED = 3    # the user answered no at a confirmation prompt: nothing was changed
INTERRUPTED = 130  # Ctrl-C

DESCRIPTION = """\
exit codes:
  0    done, nothing wrong found
  1    damage found (verify), or a store, file or entry could not be processed
       (the output names it; everything else was done)
  2    usage error: bad arguments, or a path or name that leads to no cache
  3    cancelled at the confirmation prompt (clear): nothing was changed
  130  interrupted (Ctrl-C)"""
