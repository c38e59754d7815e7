"""Cloud ingest: the topic rule's part on the local stack (MQTT in, table out, receipts back)."""
