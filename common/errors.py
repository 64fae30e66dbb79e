"""The one exception type for user mistakes: a single line saying what is wrong, where, and what to do."""

EXIT_USER_ERROR = 2  # agent.py's exit status for a UserError; a sweep reads it as "fix the setup, then retry"


def printable(text: str) -> str:
    """`text` with the bytes of a name that is not valid UTF-8 written as \\xNN (and any other lone surrogate as
    \\uNNNN): the name stays recognisable, and printing or writing it as UTF-8 cannot fail."""
    if text.isascii():
        return text
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode, kept by the surrogateescape handler
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


class UserError(Exception):
    """A mistake the user can fix (bad config, missing data, no network for a download).

    The message is one line: what is wrong, where (file, key, value), and what to do.
    `agent.py` prints it as `error: ...` and exits with status 2, without a traceback.
    """

    def __init__(self, message: str):
        super().__init__(printable(" ".join(str(message).split())))
