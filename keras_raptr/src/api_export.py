"""One decorator that names the public path and registers for serialization."""

import keras

PUBLIC_SYMBOLS = {}


def raptr_export(path):
    """Records `path` as the public name of a symbol and, for serializable
    symbols (those with `get_config`), registers it with Keras serialization
    under the `keras_raptr` package, so `.keras` files load without
    `custom_objects`."""

    def wrap(symbol):
        PUBLIC_SYMBOLS[path] = symbol
        if hasattr(symbol, "get_config"):
            register = keras.saving.register_keras_serializable("keras_raptr")
            symbol = register(symbol)
        return symbol

    return wrap
