"""Telling users what happened: live events and in-app notifications.

* the event bus itself is ``plasmaart.eventbus`` (a bottom layer every
  service may publish on); ``ledger.balance_events`` turns balance changes
  into ``balance.updated`` for the wallet's owner.
* ``notifications``: ``NotificationService`` stores in-app notifications and
  announces each one as a ``notification`` event after commit.
"""
