import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('helios', '0001_initial'),
    ]

    operations = [
        migrations.AddField(model_name='election', name='frozen_at',
                            field=models.DateTimeField(default=None, null=True)),
        migrations.AddField(model_name='election', name='voting_starts_at',
                            field=models.DateTimeField(default=None, null=True)),
        migrations.AddField(model_name='election', name='voting_started_at',
                            field=models.DateTimeField(default=None, null=True)),
        migrations.AddField(model_name='election', name='voting_ends_at',
                            field=models.DateTimeField(default=None, null=True)),
        migrations.AddField(model_name='election', name='voting_extended_until',
                            field=models.DateTimeField(default=None, null=True)),
        migrations.AddField(model_name='election', name='voting_ended_at',
                            field=models.DateTimeField(default=None, null=True)),
        migrations.AddField(model_name='election', name='archived_at',
                            field=models.DateTimeField(default=None, null=True)),
        migrations.AddField(model_name='election', name='encrypted_tally',
                            field=models.TextField(default=None, null=True)),
        migrations.CreateModel(
            name='Voter',
            fields=[
                ('id', models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('uuid', models.CharField(max_length=50)),
                ('voter_login_id', models.CharField(max_length=100, null=True)),
                ('voter_email', models.CharField(max_length=250, null=True)),
                ('election', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to='helios.election')),
            ],
        ),
        migrations.CreateModel(
            name='CastVote',
            fields=[
                ('id', models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('vote', models.TextField()),
                ('vote_hash', models.CharField(max_length=100)),
                ('cast_at', models.DateTimeField(auto_now_add=True)),
                ('cast_ip', models.GenericIPAddressField(null=True)),
                ('verified_at', models.DateTimeField(null=True)),
                ('invalidated_at', models.DateTimeField(null=True)),
                ('voter', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to='helios.voter')),
            ],
        ),
    ]
