from django.urls import path
from todos import views

urlpatterns = [
    path("todos/", views.create_todo, name="create-todo"),
    path("todos/outbox/", views.create_todo_via_outbox, name="create-todo-outbox"),
    path("todos/<int:todo_id>/", views.show_todo, name="show-todo"),
]
