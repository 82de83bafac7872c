"""The board: issues, statuses, labels, comments, mentions, dependencies, inbox, activity."""
