"""Query: SQL and reports over an export, with Athena on AWS or DuckDB in process."""
