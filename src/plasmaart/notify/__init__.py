"""Telling users what happened: every word of a notice, and its delivery.

* ``texts``: the title and body of every notice, one function per fact;
  ``render`` is the renderer ``bootstrap`` gives the outbox writer
  (``plasmaart.outbox``), with which the services that cause notices queue
  facts in the transaction of their cause.
* ``notices``: the causes the worker's clock finds by looking (credits about
  to expire, balances that fell low).
* ``delivery``: ``OutboxDelivery`` claims queued messages under a lease and
  delivers them in-app and by e-mail (``email``), retrying failed sends.
* ``notifications``: ``NotificationService`` stores in-app notifications and
  announces each one as a ``notification`` event after commit.
* ``repository``: all of the above's SQL.

The live event bus is ``plasmaart.eventbus`` (a bottom layer every service
may publish on); ``ledger.balance_events`` turns balance changes into
``balance.updated`` for the wallet's owner.
"""
