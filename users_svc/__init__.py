"""users: people (from GitHub), service accounts, and the API tokens they act with."""
