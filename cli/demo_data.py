"""Synthetic case data for the demo and the pipeline bench: a seized ledger and the victims
who file against it. Deterministic for a seed. Amounts are integers of micro-USDT (the
lognormal draw is turned into whole cents at once).

Shape of a generated case of N victims:
- every victim has a ledger account with 1–4 deposits (lognormal, median ≈ 1,500 USDT),
  some withdrawals and referral bonuses; about 10% are net winners (withdrew more than they
  put in); about 0.5% are insiders (promoters);
- each victim files one claim in Kazakh, Russian or English, TRON (custodian rail) or
  Ethereum (EVM rail); most give their scheme account id, some are matched by IIN or email
  only, a few are unknown to the ledger (evidence hashes only), a few type an amount that
  differs from the ledger, a couple of families share one payout wallet;
- about 5% make a mistake on the first try (IIN check digit, address typo, 7 decimals)
  that the form refuses and they then correct.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import random
from dataclasses import dataclass, field

from claims.money import format_amount, net_loss
from claims.validators import make_eth_address, make_iin, make_tron_address

FIRST = {
    "kk": ["Айгүл", "Нұрлан", "Қайрат", "Әсел", "Ерлан", "Гүлнар", "Дәулет", "Мөлдір", "Бауыржан", "Жанар"],
    "ru": ["Анна", "Сергей", "Ольга", "Дмитрий", "Елена", "Андрей", "Наталья", "Игорь", "Татьяна", "Павел"],
    "en": ["Anna", "Timur", "Dana", "Arman", "Madina", "Ruslan", "Aliya", "Daniyar", "Saule", "Marat"],
}
LAST = {
    "kk": ["Сәрсенбаев", "Жұмабекова", "Нұрланұлы", "Қасымова", "Төлеуов", "Әбілқайыр"],
    "ru": ["Иванов", "Ким", "Петрова", "Смирнов", "Ли", "Кузнецова"],
    "en": ["Abenov", "Sadykova", "Omarov", "Iskakova", "Bekov", "Tulegenova"],
}


@dataclass
class Victim:
    index: int
    account_id: str
    language: str
    full_name: str
    iin: str
    date_of_birth: str
    email: str
    phone: str
    network: str
    address: str
    invested: int
    withdrawn: int
    net_winner: bool
    insider: bool
    in_ledger: bool = True
    gives_account: bool = True
    claimed: int = 0
    evidence: list[str] = field(default_factory=list)
    mistake: str | None = None

    @property
    def net_loss(self) -> int:
        return net_loss(self.invested, self.withdrawn)

    def filing(self, case_code: str) -> dict:
        """The claim as the victim files it (after any mistake is corrected)."""
        body = {
            "case_id": case_code,
            "full_name": self.full_name,
            "iin": self.iin,
            "date_of_birth": self.date_of_birth,
            "email": self.email,
            "phone": self.phone,
            "language": self.language,
            "claimed_amount": format_amount(self.claimed),
            "payout_network": self.network,
            "payout_address": self.address,
            "consent": True,
        }
        if self.gives_account and self.in_ledger:
            body["scheme_account"] = self.account_id
        if self.evidence:
            body["evidence_tx_hashes"] = self.evidence
        return body

    def mistaken_filing(self, case_code: str) -> dict | None:
        """The first, refused try of a victim who makes a mistake (None for the others)."""
        if not self.mistake:
            return None
        body = self.filing(case_code)
        if self.mistake == "iin":
            body["iin"] = self.iin[:-1] + str((int(self.iin[-1]) + 1) % 10)
        elif self.mistake == "address":
            a = self.address
            swap = "2" if a[5] != "2" else "3"
            body["payout_address"] = a[:5] + swap + a[6:]
        elif self.mistake == "amount":
            body["claimed_amount"] = body["claimed_amount"].split(".")[0] + ".1234567"
        return body


def _cents(rng: random.Random, median_usdt: float, sigma: float) -> int:
    """A lognormal amount as integer micro-USDT (whole cents)."""
    return max(1, int(rng.lognormvariate(math.log(median_usdt), sigma) * 100)) * 10_000


def _hex(rng: random.Random, nbytes: int) -> str:
    return rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()


@dataclass
class CaseData:
    victims: list[Victim]
    ledger_csv: str  # the seized ledger as CSV text
    strangers: list[Victim]  # victims the ledger does not know (no_ledger_match)


def generate(n: int, seed: int = 545000, start: dt.datetime | None = None) -> CaseData:
    """A case of ``n`` victims, the same for the same seed (see the module's docstring)."""
    rng = random.Random(seed)
    start = start or dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
    victims: list[Victim] = []
    shared_wallets: dict[int, str] = {}
    used_iins: set[str] = set()
    for i in range(n):
        v = _victim(rng, i, used_iins)
        # A family or two share one payout wallet (duplicate_wallet).
        if i % 250 == 7 and i + 1 < n:
            shared_wallets[i + 1] = v.address
        if i in shared_wallets and v.network == ("tron" if shared_wallets[i].startswith("T")
                                                 else "ethereum"):
            v.address = shared_wallets[i]
        victims.append(v)
    text = _ledger_csv(rng, victims, start)
    strangers = _strangers(rng, victims, n)
    if strangers:
        gone = {v.account_id for v in strangers}
        text = "\n".join(line for line in text.split("\n") if line.split(",", 1)[0] not in gone)
        if not text.endswith("\n"):
            text += "\n"
    return CaseData(victims=victims, ledger_csv=text, strangers=strangers)


def _victim(rng: random.Random, i: int, used_iins: set[str]) -> Victim:
    """The i-th victim: who they are, what they put in and took out, what they claim."""
    lang = rng.choices(["kk", "ru", "en"], weights=[40, 45, 15])[0]
    name = f"{rng.choice(FIRST[lang])} {rng.choice(LAST[lang])} {i:05d}"
    born = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(0, 365 * 53))
    sex = rng.choice(["M", "F"])
    iin = make_iin(born, sex, rng.randrange(0, 10000))
    while iin in used_iins:  # one claim per IIN: a second person gets another serial
        iin = make_iin(born, sex, (int(iin[7:11]) + 1) % 10000)
    used_iins.add(iin)
    born = dt.date(2000 + int(iin[:2]), int(iin[2:4]), int(iin[4:6])) if iin[6] in "56" else \
        dt.date(1900 + int(iin[:2]), int(iin[2:4]), int(iin[4:6]))
    network = "tron" if rng.random() < 0.7 else "ethereum"
    payload = rng.getrandbits(160).to_bytes(20, "big")
    address = make_tron_address(payload) if network == "tron" else make_eth_address(payload)
    invested = sum(_cents(rng, 1500, 0.9) for _ in range(rng.randint(1, 4)))
    winner = rng.random() < 0.10
    if winner:
        withdrawn = invested + invested * rng.randint(5, 100) // 100
    else:
        withdrawn = invested * rng.randint(0, 70) // 100 // 10_000 * 10_000
    v = Victim(
        index=i,
        account_id=f"ACC-{i + 1:06d}",
        language=lang,
        full_name=name,
        iin=iin,
        date_of_birth=born.isoformat(),
        email=f"victim{i:05d}@example.kz",
        phone=f"+77{rng.randrange(0, 10**9):09d}",
        network=network,
        address=address,
        invested=invested,
        withdrawn=withdrawn,
        net_winner=winner,
        insider=(not winner) and rng.random() < 0.005,
    )
    v.gives_account = rng.random() < 0.9
    v.claimed = v.net_loss if v.net_loss else invested
    if not winner and rng.random() < 0.03:  # typed a different amount than the ledger shows
        v.claimed = v.net_loss + v.net_loss // 5 + 1_000_000
    r = rng.random()
    v.mistake = "iin" if r < 0.02 else "address" if r < 0.04 else "amount" if r < 0.05 else None
    return v


def _ledger_csv(rng: random.Random, victims: list[Victim], start: dt.datetime) -> str:
    """The seized ledger of these victims as CSV text: each one's deposits (the first row with
    the identity values; a third of the victims keep its tx hash as evidence), then
    withdrawals and bonuses."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["account_id", "entry_type", "amount", "occurred_at", "tx_hash", "wallet",
                "email", "phone", "iin", "insider"])
    for v in victims:
        t = start + dt.timedelta(minutes=rng.randrange(0, 60 * 24 * 300))
        remaining = v.invested
        parts = rng.randint(1, 3)
        for k in range(parts):
            amount = remaining if k == parts - 1 else remaining // (parts - k)
            remaining -= amount
            tx = _hex(rng, 32)
            if k == 0:
                v.evidence = [tx] if rng.random() < 0.3 else []
            w.writerow([v.account_id, "deposit", format_amount(amount), t.isoformat(), tx,
                        v.address if k == 0 else "", v.email if k == 0 else "",
                        v.phone if k == 0 else "", v.iin if k == 0 else "",
                        "true" if v.insider and k == 0 else ""])
            t += dt.timedelta(days=rng.randint(1, 20))
        left = v.withdrawn
        while left > 0:
            kind = "bonus" if rng.random() < 0.3 else "withdrawal"
            amount = left if left < 50_000_000 else rng.randint(left // 3, left)
            left -= amount
            w.writerow([v.account_id, kind, format_amount(amount), t.isoformat(), _hex(rng, 32),
                        "", "", "", "", ""])
            t += dt.timedelta(days=rng.randint(1, 20))
    return out.getvalue()


def _strangers(rng: random.Random, victims: list[Victim], n: int) -> list[Victim]:
    """A few victims the ledger does not know: they bring evidence hashes the seized records
    lack, and a caseworker approves them on the documents (no_ledger_match)."""
    strangers = []
    for v in victims[5 :: max(1, n // 8)][:8]:
        if v.net_winner or v.insider:
            continue
        v.in_ledger = False
        v.evidence = [_hex(rng, 32)]
        strangers.append(v)
    return strangers
