"""The read-only Gemini agent: an allow-list of tools, a bounded loop, cited answers checked
against the database."""

__all__: list[str] = []
