"""Custom search attributes (registered on the server by `make run`, the tests and the compose file)."""

from temporalio.common import SearchAttributeKey

WITHDRAWAL_STATUS = SearchAttributeKey.for_keyword("WithdrawalStatus")
NETWORK = SearchAttributeKey.for_keyword("Network")
ASSET = SearchAttributeKey.for_keyword("Asset")
USER_ID = SearchAttributeKey.for_keyword("UserId")
CLIENT_ID = SearchAttributeKey.for_keyword("ClientId")
TX_HASH = SearchAttributeKey.for_keyword("TxHash")

ALL = (WITHDRAWAL_STATUS, NETWORK, ASSET, USER_ID, CLIENT_ID, TX_HASH)
