"""Points inside a save where tests inject faults (a stall, a crash), as an object passed in.

Production code runs `SaveHooks()`, whose methods do nothing; a test passes a subclass to
`Checkpointer(save_hooks=...)` (through `build_run`), so no environment variable or global
decides what a save does.
"""


class SaveHooks:
    """Called by `Checkpointer.save` at its phases; override to inject faults."""

    def before_engine_files(self, *, iteration: int, tag: str, staging_dir: str) -> None:
        """The staging folder exists (empty); no rank has written anything yet."""

    def after_engine_files(self, *, iteration: int, tag: str, staging_dir: str) -> None:
        """DeepSpeed wrote its files into the staging folder; nothing is committed yet."""

    def before_commit(self, *, iteration: int, tag: str, staging_dir: str) -> None:
        """Every rank wrote everything (rank 0 only): manifest, rename and trackers follow."""

    def after_rename(self, *, iteration: int, tag: str, final_dir: str) -> None:
        """The folder is renamed into place (rank 0 only); the tracker files are still old."""

    def between_trackers(self, *, iteration: int, tag: str) -> None:
        """`latest` names the new tag; `latest_checkpointed_iteration.txt` is still old."""
