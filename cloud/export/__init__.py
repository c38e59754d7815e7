"""Export: the table to a folder or S3, in layouts Athena and DuckDB read."""
