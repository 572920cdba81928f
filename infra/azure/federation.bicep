// convbridge's keyless identity on Azure Blob Storage: an Entra app registration whose federated
// credentials trust the JWTs AWS STS GetWebIdentityToken issues for the bridge's Lambda roles
// (issuer: the AWS account's outbound identity federation issuer; subject: a role's ARN;
// audience: api://AzureADTokenExchange), and the two storage roles its service principal needs:
// Storage Blob Data Contributor (read sources, write outputs and records, move failed sources)
// and Storage Blob Delegator (get the user delegation key that signs the SAS grants).
//
// Entra objects are not Azure resources: they come from the Microsoft Graph Bicep extension
// (bicepconfig.json beside this file pins it), and the deploying identity needs
// Application.ReadWrite.All in the tenant besides the right to assign roles on the account.
//
//   az deployment group create -g <resource group> -f infra/azure/federation.bicep \
//     -p storageAccountName=<account> \
//        issuer="$(aws iam get-outbound-web-identity-federation-info --query IssuerIdentifier --output text)" \
//        subjects="$(aws cloudformation describe-stacks --stack-name convbridge \
//          --query "Stacks[0].Outputs[?OutputKey=='AzureFederatedRoleArns'].OutputValue" \
//          --output text | jq -cR 'split(",")')"
//
// Its outputs tenantId and clientId go into the AzureAccountSecretArn secret. Checked offline
// by tests/unit/test_infra_azure.py, like main.bicep.

extension microsoftGraphV1

targetScope = 'resourceGroup'

@description('Name of the existing storage account the bridge reads and writes.')
param storageAccountName string

@description('The AWS account\'s outbound identity federation issuer (aws iam get-outbound-web-identity-federation-info): the iss of the JWTs STS issues.')
param issuer string

@minLength(1)
@maxLength(20)
@description('ARNs of the roles that sign in (the AzureFederatedRoleArns output of the convbridge stack, as a JSON array); Entra allows 20 federated credentials per app.')
param subjects array

@description('Unique name of the app registration: deploying again updates the same app.')
param appUniqueName string = 'convbridge-${storageAccountName}'

@description('Display name of the app registration.')
param appDisplayName string = 'convbridge (${storageAccountName})'

// Built-in role definitions: Storage Blob Data Contributor, Storage Blob Delegator.
var blobRoleDefinitionIds = [
  'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: appUniqueName
  displayName: appDisplayName
  signInAudience: 'AzureADMyOrg'
}

// One credential per role: Entra matches issuer, subject and audience exactly.
resource federatedCredentials 'Microsoft.Graph/applications/federatedIdentityCredentials@v1.0' = [for (subject, index) in subjects: {
  name: '${app.uniqueName}/aws-role-${index}'
  description: 'convbridge Lambda role ${subject}'
  issuer: issuer
  subject: subject
  audiences: [
    'api://AzureADTokenExchange'
  ]
}]

resource servicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: app.appId
}

resource blobRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleDefinitionId in blobRoleDefinitionIds: {
  scope: storage
  name: guid(storage.id, servicePrincipal.id, roleDefinitionId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitionId)
    principalId: servicePrincipal.id
    principalType: 'ServicePrincipal'
  }
}]

output tenantId string = tenant().tenantId
output clientId string = app.appId
output servicePrincipalId string = servicePrincipal.id
