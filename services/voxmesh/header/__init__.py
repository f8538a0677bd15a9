"""The header store: threads, members, message headers, timelines, marks, likes."""
