"""The one exception type that carries a message meant for the user."""


class TcplifeError(Exception):
    """A problem the user can fix; its message is one clear sentence.

    Commands print it on stderr and exit non-zero, without a traceback.
    """
