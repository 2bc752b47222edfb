"""
Helpers for the property tests of the pure parsers: a parser fed arbitrary
bytes may refuse them only with its own error (which becomes an SMTP
reply), never with any other exception (which would drop the connection).
"""


def call_each(function, inputs, refusal):
    """
    Call C{function} with each of C{inputs}; C{refusal} (the parser's own
    error) is an allowed outcome, any other exception fails the test.
    """
    for data in inputs:
        try:
            function(data)
        except refusal:
            pass
