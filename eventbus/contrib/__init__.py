"""Web framework integrations: :mod:`eventbus.contrib.django`, :mod:`eventbus.contrib.flask`."""
