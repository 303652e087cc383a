"""Credit controls a wallet's owner sets (docs/credits.md): spend limits,
auto top-up and balance alerts.

They sit on the ledger's two hooks. A hold asks the generation layer's spend
guard under the wallet's lock (limits: ``limits``), and an operation that
leaves the balance outside the wallet's **watch** calls ``WalletWatch`` in
its transaction (``watch``): the auto top-up (``topup``) and the alerts
(``alerts``) each see the new balance, act on it, and say which balance they
want to see next; the watch is set to the nearest of those. A wallet with no
controls has no watch and costs the ledger nothing.
"""
