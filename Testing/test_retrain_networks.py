

def test_cli_names_match_the_registries():
    """The command line lists stage R's names without importing torch; they must agree."""
    from SFRSegmenterLib.retrain.names import NETWORK_NAMES, SSL_NAMES
    from SFRSegmenterLib.retrain.networks import NETWORKS
    from SFRSegmenterLib.retrain.ssl import SSL_METHODS

    assert set(NETWORK_NAMES) <= set(NETWORKS)
    assert set(SSL_NAMES) <= set(SSL_METHODS)
