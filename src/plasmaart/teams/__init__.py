"""Teams: shared wallets, seats, members' caps and invitations."""
