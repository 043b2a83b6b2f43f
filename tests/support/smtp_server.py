"""A real SMTP server (aiosmtpd) for the SMTP adapter's tests.

Usage: smtp_server.py PORT USER PASSWORD [CERT KEY]
- Requires AUTH (PLAIN or LOGIN) with USER/PASSWORD; wrong credentials get 535.
- With CERT and KEY it offers STARTTLS and requires it before AUTH.
- A recipient whose local part is `codeNNN` is answered with that SMTP reply code (550, 451, 421, ...).
- Every accepted message is printed to stdout as one JSON line: {"auth_user", "mail_from", "rcpt_tos", "data"}.
Prints "READY" once listening.
"""
import asyncio
import json
import logging
import ssl
import sys
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

REPLIES = {
    "421": "421 4.7.0 Too many messages, slow down",
    "451": "451 4.3.0 Temporary local problem",
    "452": "452 4.2.2 Mailbox full",
    "550": "550 5.1.1 Mailbox unavailable",
    "554": "554 5.7.1 Message rejected as spam",
}


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local.startswith("code") and local[4:] in REPLIES:
            return REPLIES[local[4:]]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        record = {
            "auth_user": session.auth_data.decode() if isinstance(session.auth_data, bytes) else None,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf8", errors="replace"),
        }
        print(json.dumps(record), flush=True)
        return "250 2.0.0 Ok: queued as TEST123"


def main():
    # Plain-text AUTH is what the reply-code test wants; aiosmtpd's warnings about it are noise here.
    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    port, user, password = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode()
    tls_context = None
    if len(sys.argv) > 5:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(sys.argv[4], sys.argv[5])

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == user and auth_data.password == password
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=tls_context is not None,
        tls_context=tls_context,
        require_starttls=tls_context is not None,
    )
    controller.start()
    print("READY", flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
