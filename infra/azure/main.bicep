// convbridge on Azure Blob Storage: an Event Grid system topic on the storage account and one
// subscription per watched container, delivering Microsoft.Storage.BlobCreated to the Azure
// trigger's Function URL (the AzureEventGridEndpoint output of the convbridge stack).
//
// Event Grid cannot sign deliveries to a plain webhook, so the endpoint URL carries the code the
// trigger compares (in constant time) with the secret named by EventGridSecretArn: `?code=...`.
// Event Grid keeps query strings of webhook URLs secret (they are not shown or returned), and the
// parameter is @secure() so it stays out of deployment history.
//
//   az deployment group create -g <resource group> -f infra/azure/main.bicep \
//     -p storageAccountName=<account> endpointUrl=<AzureEventGridEndpoint> \
//        endpointCode=<the code> watched='[{"container": "inbox", "prefix": ""}]'
//
// Checked offline by tests/unit/test_infra_azure.py (no Bicep CLI is available from the package
// registries this project installs from); `az bicep build -f infra/azure/main.bicep` where the
// CLI is installed.

targetScope = 'resourceGroup'

@description('Name of the existing storage account whose uploads start conversions.')
param storageAccountName string

@description('Region of the system topic: it must be the storage account\'s region.')
param location string = resourceGroup().location

@description('The Azure trigger\'s endpoint: the AzureEventGridEndpoint output of the convbridge stack (a Lambda Function URL, ending in /).')
param endpointUrl string

@secure()
@minLength(32)
@description('The endpoint code: the value of the Secrets Manager secret EventGridSecretArn names (at least 32 characters).')
param endpointCode string

@description('Containers and key prefixes to watch; one subscription each. The rules file must match the same container (its location) and prefix.')
param watched array = [
  {
    container: 'inbox'
    prefix: ''
  }
]

@description('Only blob names ending with this start a conversion (e.g. .png); empty for any.')
param subjectEndsWith string = ''

@description('Container (created here) for deliveries Event Grid gave up on.')
param deadLetterContainerName string = 'convbridge-dead-letters'

@minValue(1)
@maxValue(30)
@description('Delivery attempts before an event is dead-lettered (Event Grid retries with back-off).')
param maxDeliveryAttempts int = 30

@minValue(1)
@maxValue(1440)
@description('Minutes an undelivered event is retried before it is dead-lettered.')
param eventTimeToLiveInMinutes int = 1440

@minValue(1)
@maxValue(5000)
@description('Events per delivery; the trigger submits each blob of a batch and answers 503 when one needs a retry.')
param maxEventsPerBatch int = 10

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource deadLetters 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: '${storageAccountName}-convbridge'
  location: location
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

resource subscriptions 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = [for (item, index) in watched: {
  parent: systemTopic
  name: 'convbridge-${index}-${item.container}'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: '${endpointUrl}?code=${endpointCode}'
        maxEventsPerBatch: maxEventsPerBatch
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: '/blobServices/default/containers/${item.container}/blobs/${item.prefix}'
      subjectEndsWith: subjectEndsWith
      isSubjectCaseSensitive: true
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterDestination: {
      endpointType: 'StorageBlob'
      properties: {
        resourceId: storage.id
        blobContainerName: deadLetterContainerName
      }
    }
  }
  dependsOn: [
    deadLetters
  ]
}]

output systemTopicName string = systemTopic.name
output subscriptionNames array = [for (item, index) in watched: subscriptions[index].name]
output deadLetterContainer string = deadLetterContainerName
