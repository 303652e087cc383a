"""Fair use: rate limits per plan, abuse signals and scores, flags, and the
suspension use case.

``rules`` holds the pure scoring rules, ``request_limiter`` the request
counters (memory or Redis), ``counters`` the identical-request counts and the
queue of signals, ``tasks`` the flusher that records them, ``service`` the
decisions, ``flags`` the flags and fair use's audit entries, ``suspension``
what suspending and reinstating an account do (the one home of both), and
``repository`` their SQL. See docs/fair-use.md.
"""
