"""The notification sender: push registrations, pushes to offline users, unread counts."""
