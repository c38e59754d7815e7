"""The cloud half: the IoT rule's part, the table, exports, queries, and AWS set-up."""
