"""What the account flows a customer runs alone share (resetting and
changing a password, proving and changing an address): the services they
call and where their mail's links and support address come from. The flows'
services (``password_service.PasswordService``, ``addresses.AddressService``)
are ``AccountFlow``s, built from one ``SelfServiceParts``."""

from __future__ import annotations

from dataclasses import dataclass

from plasmaart.accounts.credentials import CredentialService
from plasmaart.accounts.second_factor import SecondFactor
from plasmaart.accounts.service import AccountService
from plasmaart.accounts.tokens import AccountTokens, Throttle
from plasmaart.clock import Clock
from plasmaart.links import Links
from plasmaart.outbox import Outbox


@dataclass(frozen=True)
class SelfServiceParts:
    clock: Clock
    accounts: AccountService
    credentials: CredentialService
    tokens: AccountTokens
    throttle: Throttle
    second_factor: SecondFactor
    outbox: Outbox
    links: Links
    # Named in every mail the flows send.
    support_email: str


class AccountFlow:
    """A service of self-service flows: ``parts``' services as attributes."""

    def __init__(self, parts: SelfServiceParts) -> None:
        self.clock = parts.clock
        self.accounts = parts.accounts
        self.credentials = parts.credentials
        self.tokens = parts.tokens
        self.throttle = parts.throttle
        self.second_factor = parts.second_factor
        self.outbox = parts.outbox
        self.links = parts.links
        self.support_email = parts.support_email
