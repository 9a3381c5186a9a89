"""The one exception type the user sees.

Anything wrong with the user's input (a file, an option, a model) raises NSTError with a one-line message that
names the problem; the CLI prints it as ``nst: error: <message>`` and exits with status 2.
"""


class NSTError(Exception):
    """A problem with the user's input, reported in one line (exit status 2), never as a traceback."""
