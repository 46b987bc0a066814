"""``vitrain serve``: the web app that shows a trained model and its run (the optional extra
``pip install 'vitrain[serve]'``, which brings Gradio). The app itself is in :mod:`vitrain.serve.app`."""
