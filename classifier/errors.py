"""The one exception type for problems a user can cause and fix."""


class ClassifierError(Exception):
    """A bad file, a wrong checkpoint, missing data: the message is meant for a person.

    The command-line tools print it on one line and exit with status 1.
    """
