"""Fair use: rate limits per plan, abuse signals and scores, automatic suspension.

``rules`` holds the pure scoring rules, ``ratelimits`` the request counters
(memory or Redis), ``service`` the decisions and ``repository`` their SQL.
See docs/fair-use.md.
"""
