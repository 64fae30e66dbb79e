"""The one exception type for user mistakes: a single line saying what is wrong, where, and what to do."""

EXIT_USER_ERROR = 2  # agent.py's exit status for a UserError; a sweep reads it as "fix the setup, then retry"


class UserError(Exception):
    """A mistake the user can fix (bad config, missing data, no network for a download).

    The message is one line: what is wrong, where (file, key, value), and what to do.
    `agent.py` prints it as `error: ...` and exits with status 2, without a traceback.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
